-- Quality by position, grouped as the report shows it.
SELECT * FROM quality_by_position ORDER BY model_name, n_ctx, baseline, backend, bucket_lo;
