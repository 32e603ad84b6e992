-- Views over a run directory. db.py registers attempts_raw, tokens_raw and plan_raw first
-- (read_parquet over the run's files, or empty tables of the right schema).

-- Every attempt of every cell, with the configuration label reports use.
CREATE OR REPLACE VIEW attempts AS
SELECT *,
       CASE WHEN type_k = type_v THEN type_k ELSE type_k || '/' || type_v END AS config
FROM attempts_raw;

-- The plan of the latest session: one row per cell.
CREATE OR REPLACE VIEW plan AS
SELECT *,
       CASE WHEN type_k = type_v THEN type_k ELSE type_k || '/' || type_v END AS config
FROM plan_raw;

-- The attempt that counts for each planned cell: an ok attempt if there is one (the latest),
-- else the latest final attempt. Attempts the worker retried itself ('oom-retrying') never
-- count, nor do quality attempts whose per-token rows went to results/quarantine/ (table
-- lost_tokens). Cells dropped from the matrix are not here (see attempts for them).
CREATE OR REPLACE VIEW counted AS
SELECT a.*
FROM attempts a
WHERE a.cell_id IN (SELECT cell_id FROM plan)
  AND NOT list_contains(coalesce(a.flags, []), 'oom-retrying')
  AND a.attempt_id NOT IN (SELECT attempt_id FROM lost_tokens)
QUALIFY row_number() OVER (
    PARTITION BY a.cell_id
    ORDER BY (a.status = 'ok') DESC, a.finished_at DESC, a.attempt DESC) = 1;

-- Quality cells of different configurations whose per-token nll and kld are bit-identical
-- (same tokens_digest) did not measure different caches: a setting did not take effect (a
-- published asymmetric K/V sweep matched its symmetric one to six decimals). Each gets the
-- flag 'identical-results' and `identical_to` lists the others. Except pairs known to be
-- identical: on the CPU backend with flash attention, f16 and f32 caches give the same logits
-- (its kernel computes in f16 either way), so those are not flagged (docs/reports.md).
CREATE OR REPLACE VIEW identical_results AS
SELECT a.attempt_id, list(DISTINCT b.config ORDER BY b.config) AS identical_to
FROM counted a JOIN counted b
  ON a.tokens_digest = b.tokens_digest AND a.config <> b.config
WHERE a.kind = 'quality' AND a.status = 'ok' AND b.kind = 'quality' AND b.status = 'ok'
  AND NOT (a.backend = 'CPU' AND coalesce(a.flash_attn_enabled, false)
           AND a.type_k IN ('f16', 'f32') AND a.type_v IN ('f16', 'f32')
           AND b.type_k IN ('f16', 'f32') AND b.type_v IN ('f16', 'f32'))
GROUP BY a.attempt_id;

CREATE OR REPLACE VIEW results AS
SELECT c.* REPLACE (
           CASE WHEN i.identical_to IS NULL THEN c.flags
                ELSE list_append(coalesce(c.flags, []), 'identical-results') END AS flags),
       i.identical_to
FROM counted c LEFT JOIN identical_results i USING (attempt_id);

-- Every planned cell with where it stands; status 'missing' when nothing has been recorded.
CREATE OR REPLACE VIEW cell_status AS
SELECT p.cell_id, p.kind, p.model_name, p.config, p.type_k, p.type_v, p.n_ctx, p.n_depth,
       p.host_class, p.quality_backend,
       coalesce(r.status, 'missing') AS status, r.host, r.error_class, r.error_message,
       r.attempt AS attempts, r.finished_at
FROM plan p LEFT JOIN results r USING (cell_id);

-- Per-token figures of the counted quality attempts.
CREATE OR REPLACE VIEW tokens AS
SELECT t.*, r.model_name, r.config, r.type_k, r.type_v, r.n_ctx, r.baseline, r.host,
       r.host_class, r.backend
FROM tokens_raw t JOIN results r USING (attempt_id);

-- Quality by position within the chunk: the scored tokens of each cell in power-of-two
-- buckets of their position [lo, 2 lo) (pos is the position of the predicted token), with the
-- same statistics and uncertainties as the quality view per bucket. With llama-perplexity's
-- scoring (the second half of each chunk) every token falls in the bucket [n_ctx/2, n_ctx);
-- quality.score = "all" scores every position, so the buckets run 1, 2, 4, ... n_ctx/2.
CREATE OR REPLACE VIEW quality_by_position AS
WITH t AS (
    SELECT r.cell_id, r.model_name, r.config, r.type_k, r.type_v, r.n_ctx, r.baseline,
           r.backend, r.host_class, r.flags, t.chunk, t.nll, t.nll_base, t.kld, t.dp, t.same_top,
           (1 << CAST(floor(log2(t.pos) + 1e-9) AS INTEGER))::INTEGER AS bucket_lo
    FROM results r JOIN tokens_raw t USING (attempt_id)
    WHERE r.kind = 'quality' AND r.status = 'ok' AND t.pos >= 1
), s AS (
    SELECT cell_id, model_name, config, type_k, type_v, n_ctx, baseline, backend, host_class,
           flags, bucket_lo, count(*) AS n_tokens, count(DISTINCT chunk) AS n_chunks,
           avg(nll) AS nll, stddev_samp(nll) AS nll_sd, avg(nll_base) AS nllb,
           avg(kld) AS kld, stddev_samp(kld) AS kld_sd,
           avg(dp) AS dp, stddev_samp(dp) AS dp_sd,
           avg(same_top::DOUBLE) AS same_top
    FROM t GROUP BY ALL
)
SELECT cell_id, model_name, config, type_k, type_v, n_ctx, baseline, backend, host_class, flags,
       bucket_lo, least(2 * bucket_lo, n_ctx) - 1 AS bucket_hi, n_tokens, n_chunks,
       kld AS kld_mean, CASE WHEN n_tokens > 10 THEN coalesce(kld_sd, 0) / sqrt(n_tokens) ELSE 0 END AS kld_unc,
       dp AS dp_mean, CASE WHEN n_tokens > 10 THEN coalesce(dp_sd, 0) / sqrt(n_tokens) ELSE 0 END AS dp_unc,
       same_top AS same_top_p, sqrt(same_top * (1 - same_top) / nullif(n_tokens - 1, 0)) AS same_top_unc,
       exp(nll) AS ppl, exp(nll) * CASE WHEN n_tokens > 10 THEN coalesce(nll_sd, 0) / sqrt(n_tokens) ELSE 0 END AS ppl_unc,
       exp(nllb) AS ppl_base
FROM s;

-- Generation agreement per quality cell (workers/generation.py): per prompt depth, the mean
-- index of the first generated token that differs from the baseline's, the share of prompts
-- whose whole continuation matched, and the mean share of equal tokens.
CREATE OR REPLACE VIEW generation_agreement AS
WITH g AS (
    SELECT r.cell_id, r.model_name, r.config, r.type_k, r.type_v, r.n_ctx, r.baseline, r.backend,
           r.host_class, r.flags, r.gen_tokens,
           unnest(r.gen_depth) AS depth, unnest(r.gen_first_diff) AS first_diff,
           unnest(r.gen_equal) AS equal
    FROM results r
    WHERE r.kind = 'quality' AND r.status = 'ok' AND len(coalesce(r.gen_depth, [])) > 0
)
SELECT cell_id, model_name, config, type_k, type_v, n_ctx, baseline, backend, host_class, flags,
       gen_tokens, depth, count(*) AS n_prompts,
       avg(first_diff) AS first_diff_mean,
       CASE WHEN count(*) > 1 THEN stddev_samp(first_diff) / sqrt(count(*)) ELSE 0 END AS first_diff_unc,
       avg((first_diff = gen_tokens)::DOUBLE) AS all_equal_p,
       avg(equal) AS equal_mean,
       CASE WHEN count(*) > 1 THEN stddev_samp(equal) / sqrt(count(*)) ELSE 0 END AS equal_unc
FROM g GROUP BY ALL;

-- Quality per cell, with every statistic llama-perplexity prints for --kl-divergence,
-- computed exactly from the per-token values. Uncertainties: sqrt((E[x^2]-E[x]^2)/(N-1)).
CREATE OR REPLACE VIEW quality AS
WITH s AS (
    SELECT r.cell_id, r.model_name, r.config, r.type_k, r.type_v, r.n_ctx, r.baseline,
           r.host, r.host_class, r.backend, r.flags, r.attn_rot_k, r.attn_rot_v,
           count(*) AS n_tokens,
           count(DISTINCT t.chunk) AS n_chunks,
           avg(t.nll) AS nll, avg(t.nll * t.nll) AS nll2,
           avg(t.nll_base) AS nllb, avg(t.nll_base * t.nll_base) AS nllb2,
           avg(t.nll * t.nll_base) AS nll_nllb,
           avg(t.kld) AS kld, avg(t.kld * t.kld) AS kld2,
           quantile_cont(t.kld, [0.999, 0.99, 0.95, 0.90, 0.5, 0.10, 0.05, 0.01, 0.001]) AS kq,
           max(t.kld) AS kld_max, min(t.kld) AS kld_min,
           avg(t.dp) AS dp, avg(t.dp * t.dp) AS dp2, avg(t.dp * t.dp * t.dp * t.dp) AS dp4,
           quantile_cont(t.dp, [0.999, 0.99, 0.95, 0.90, 0.75, 0.5, 0.25, 0.10, 0.05, 0.01, 0.001]) AS dq,
           max(t.dp) AS dp_max, min(t.dp) AS dp_min,
           avg(t.same_top::DOUBLE) AS same_top
    FROM results r JOIN tokens_raw t USING (attempt_id)
    WHERE r.kind = 'quality' AND r.status = 'ok'
    GROUP BY ALL
), chunk_kl AS (
    -- chunks, not tokens, are the independent units: the precision reached is the standard
    -- error of the mean KL over per-chunk means, relative to the mean (kvsweep/precision.py)
    SELECT r.cell_id, t.chunk, avg(t.kld) AS kld
    FROM results r JOIN tokens_raw t USING (attempt_id)
    WHERE r.kind = 'quality' AND r.status = 'ok'
    GROUP BY ALL
), chunk_se AS (
    SELECT cell_id,
           CASE WHEN count(*) < 2 THEN NULL
                WHEN avg(kld) = 0 THEN CASE WHEN stddev_samp(kld) = 0 THEN 0 END
                ELSE stddev_samp(kld) / sqrt(count(*)) / abs(avg(kld)) END AS kld_rel_se
    FROM chunk_kl
    GROUP BY cell_id
), u AS (
    -- llama-perplexity's mean_and_uncertainty() and covariance(): an uncertainty is 0 unless
    -- N > 10 and the variance is positive; the covariance is 0 when N < 10.
    SELECT *,
           CASE WHEN n_tokens > 10 AND nll2 - nll * nll > 0
                THEN sqrt((nll2 - nll * nll) / (n_tokens - 1)) ELSE 0 END AS nll_unc,
           CASE WHEN n_tokens > 10 AND nllb2 - nllb * nllb > 0
                THEN sqrt((nllb2 - nllb * nllb) / (n_tokens - 1)) ELSE 0 END AS nllb_unc,
           CASE WHEN n_tokens >= 10 THEN (nll_nllb - nll * nllb) / (n_tokens - 1) ELSE 0 END AS nll_cov,
           CASE WHEN n_tokens > 10 AND kld2 - kld * kld > 0
                THEN sqrt((kld2 - kld * kld) / (n_tokens - 1)) ELSE 0 END AS kld_unc,
           CASE WHEN n_tokens > 10 AND dp2 - dp * dp > 0
                THEN sqrt((dp2 - dp * dp) / (n_tokens - 1)) ELSE 0 END AS dp_unc,
           CASE WHEN n_tokens > 10 AND dp4 - dp2 * dp2 > 0
                THEN sqrt((dp4 - dp2 * dp2) / (n_tokens - 1)) ELSE 0 END AS dp2_unc
    FROM s
)
SELECT cell_id, model_name, config, type_k, type_v, n_ctx, baseline, host, host_class, backend,
       flags, attn_rot_k, attn_rot_v, n_chunks, n_tokens,
       exp(nll) AS ppl, exp(nll) * nll_unc AS ppl_unc,
       exp(nllb) AS ppl_base, exp(nllb) * nllb_unc AS ppl_base_unc,
       nll - nllb AS ln_ppl_ratio,
       sqrt(greatest(nll_unc * nll_unc + nllb_unc * nllb_unc - 2 * nll_cov, 0)) AS ln_ppl_ratio_unc,
       nll_cov / nullif(nll_unc * nllb_unc, 0) AS ln_ppl_cor,
       kld AS kld_mean, kld_unc,
       kld_max, kq[1] AS kld_p99_9, kq[2] AS kld_p99, kq[3] AS kld_p95, kq[4] AS kld_p90,
       kq[5] AS kld_median, kq[6] AS kld_p10, kq[7] AS kld_p5, kq[8] AS kld_p1, kq[9] AS kld_p0_1,
       kld_min,
       dp AS dp_mean, dp_unc,
       dp_max, dq[1] AS dp_p99_9, dq[2] AS dp_p99, dq[3] AS dp_p95, dq[4] AS dp_p90, dq[5] AS dp_p75,
       dq[6] AS dp_median, dq[7] AS dp_p25, dq[8] AS dp_p10, dq[9] AS dp_p5, dq[10] AS dp_p1,
       dq[11] AS dp_p0_1, dp_min,
       sqrt(dp2) AS dp_rms,
       0.5 / nullif(sqrt(dp2), 0) * dp2_unc AS dp_rms_unc,
       same_top AS same_top_p, sqrt(same_top * (1 - same_top) / nullif(n_tokens - 1, 0)) AS same_top_unc,
       exp(nll - nllb) AS ppl_ratio,
       exp(nll - nllb) * sqrt(greatest(nll_unc * nll_unc + nllb_unc * nllb_unc - 2 * nll_cov, 0)) AS ppl_ratio_unc,
       exp(nll) - exp(nllb) AS ppl_diff,
       sqrt(greatest(exp(2 * nll) * nll_unc * nll_unc + exp(2 * nllb) * nllb_unc * nllb_unc
                     - 2 * exp(nll) * exp(nllb) * nll_cov, 0)) AS ppl_diff_unc,
       c.kld_rel_se, r.stop_reason
FROM u LEFT JOIN chunk_se c USING (cell_id) LEFT JOIN (SELECT cell_id, stop_reason FROM results) r USING (cell_id);

-- Speed per cell (llama-bench's fields), ok attempts only.
CREATE OR REPLACE VIEW speed AS
SELECT cell_id, model_name, config, type_k, type_v, kind, test, host, host_class, backend,
       device_name, n_depth, n_prompt, n_gen, repetitions, n_batch, n_ubatch, n_threads,
       flash_attn, flash_attn_enabled, attn_rot_k, attn_rot_v, avg_ts, stddev_ts, avg_ns,
       stddev_ns, samples_ns, samples_ts, kv_bytes, flags, test_time, build_commit,
       len(samples_ts) AS repetitions_run, stop_reason, ts_rel_se
FROM results
WHERE kind IN ('pp', 'tg') AND status = 'ok';

-- The measured context ceiling (kind 'ceiling', workers/ceiling.py): per configuration and host
-- class, the deepest depth whose pp and tg tests fit, bisected to `ceiling_resolution` tokens.
CREATE OR REPLACE VIEW measured_ceiling AS
SELECT cell_id, model_name, config, type_k, type_v, host_class, host, status, ceiling_depth,
       ceiling_fail_depth, ceiling_resolution, ceiling_bytes, ceiling_bound, ceiling_probes,
       device_memory_total, flags
FROM results
WHERE kind = 'ceiling';
