-- Quality of two runs side by side: per matching quality cell (model, n_ctx, baseline, cache
-- configuration), B minus A for PPL, mean KL and same-top agreement. compare.py registers
-- run_a_quality and run_b_quality (each run's quality_table.sql). The uncertainty of a
-- difference is sqrt(unc_a^2 + unc_b^2), which treats the runs as independent: an upper bound
-- when both scored the same tokens.
SELECT model_name, n_ctx, baseline, config,
       a.status AS status_a, b.status AS status_b,
       a.ppl AS ppl_a, b.ppl AS ppl_b, b.ppl - a.ppl AS ppl_delta,
       sqrt(a.ppl_unc ^ 2 + b.ppl_unc ^ 2) AS ppl_delta_unc,
       a.kld_mean AS kld_a, b.kld_mean AS kld_b, b.kld_mean - a.kld_mean AS kld_delta,
       sqrt(a.kld_unc ^ 2 + b.kld_unc ^ 2) AS kld_delta_unc,
       a.same_top_p AS same_top_a, b.same_top_p AS same_top_b,
       b.same_top_p - a.same_top_p AS same_top_delta,
       sqrt(a.same_top_unc ^ 2 + b.same_top_unc ^ 2) AS same_top_delta_unc,
       a.model_name IS NOT NULL AND b.model_name IS NOT NULL AS matched
FROM run_a_quality a FULL OUTER JOIN run_b_quality b USING (model_name, n_ctx, baseline, config)
ORDER BY model_name, n_ctx, baseline, config;
