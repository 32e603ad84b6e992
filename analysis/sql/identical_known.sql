-- Pairs of configurations whose quality results are bit-identical and known to be so (views.sql,
-- identical_results: f16 and f32 on the CPU backend with flash attention), for the report's
-- explanation; the flagged pairs are in results.identical_to.
SELECT DISTINCT a.model_name, a.n_ctx, a.baseline, a.backend,
       least(a.config, b.config) AS config_a, greatest(a.config, b.config) AS config_b
FROM counted a JOIN counted b
  ON a.tokens_digest = b.tokens_digest AND a.config < b.config
WHERE a.kind = 'quality' AND a.status = 'ok' AND b.kind = 'quality' AND b.status = 'ok'
  AND a.attempt_id NOT IN (SELECT attempt_id FROM identical_results)
ORDER BY ALL;
