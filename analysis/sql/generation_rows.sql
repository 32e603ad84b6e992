-- Generation agreement next to each cell's mean KL, grouped as the report shows it.
SELECT g.*, q.kld_mean, q.kld_unc
FROM generation_agreement g LEFT JOIN quality q USING (cell_id)
ORDER BY model_name, n_ctx, baseline, backend, depth;
