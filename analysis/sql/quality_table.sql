-- The seeds' quality table with uncertainties: Cache | PPL ± | KL mean ± | KL p99 | same top p ±,
-- per model, n_ctx, baseline (and the backend a per-backend cell was planned for). Every planned quality cell has a row; status says whether its
-- figures exist (the statistics are NULL unless it ran ok).
SELECT p.model_name, p.n_ctx, p.baseline, p.quality_backend, p.config, p.type_k, p.type_v,
       coalesce(r.status, 'missing') AS status, coalesce(r.flags, []) AS flags, r.identical_to,
       k.bits_per_value,
       q.ppl, q.ppl_unc, q.ln_ppl_ratio, q.ln_ppl_ratio_unc, q.kld_mean, q.kld_unc, q.kld_p99,
       q.same_top_p, q.same_top_unc, q.n_tokens, q.n_chunks, r.host, r.host_class,
       p.precision, q.kld_rel_se, q.stop_reason
FROM plan p
LEFT JOIN results r USING (cell_id)
LEFT JOIN quality q USING (cell_id)
LEFT JOIN kl_vs_bits k
       ON k.model_name = p.model_name AND k.n_ctx = p.n_ctx AND k.baseline = p.baseline
      AND k.config = p.config AND k.backend IS NOT DISTINCT FROM r.backend
WHERE p.kind = 'quality'
ORDER BY p.model_name, p.n_ctx, p.baseline, p.quality_backend;
