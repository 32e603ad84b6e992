-- Quality compared across backends, grouped as the report shows it.
SELECT * FROM cross_backend ORDER BY model_name, n_ctx, baseline, backend_a, backend_b;
