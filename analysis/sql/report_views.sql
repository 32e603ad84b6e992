-- Views the report, the charts and the recommendations are made of (docs/sql.md, docs/reports.md).
-- They build on views.sql. db.py registers two small tables first:
--   cache_types(name, bits_per_value)       kvsweep/cache_types.py, so SQL knows storage cost
--   kl_budgets(budget, max_kld, budget_order) the quality budgets recommendations use
--                                            (max_kld NULL: no limit)

-- A counted result is trusted when it is ok and carries no flag. Flags mark figures the worker
-- measured but doubts (implausible-ppl, nonfinite, a kernel fallback, the fake runner):
-- recommendations leave them out, and the report lists them.
CREATE OR REPLACE VIEW untrusted AS
SELECT r.cell_id, r.kind, r.test, r.model_name, r.config, r.type_k, r.type_v, r.n_ctx,
       r.n_depth, r.host_class, r.host, r.status, coalesce(r.flags, []) AS flags,
       r.error_class, r.error_message
FROM results r
WHERE r.status = 'invalid' OR (r.status = 'ok' AND len(coalesce(r.flags, [])) > 0);

-- Each depth of each configuration on each host class, pp and tg together: did it fit (every
-- planned speed cell there ran ok), which failure marks it when it did not, how fast it ran,
-- how much memory it took.
CREATE OR REPLACE VIEW depth_status AS
WITH c AS (
    SELECT p.model_name, p.host_class, p.config, p.type_k, p.type_v, p.n_depth, p.kind,
           coalesce(r.status, 'missing') AS status,
           coalesce(r.status, 'missing') = 'ok' AND len(coalesce(r.flags, [])) = 0 AS trusted,
           r.avg_ts, r.stddev_ts, r.predicted_bytes, r.kv_bytes
    FROM plan p LEFT JOIN results r USING (cell_id)
    WHERE p.kind IN ('pp', 'tg')
)
SELECT model_name, host_class, config, type_k, type_v, n_depth,
       bool_and(status = 'ok') AS fits,
       bool_and(trusted) AS trusted,
       -- the failure that explains the depth best: memory first, then the rest
       CASE WHEN bool_and(status = 'ok') THEN 'ok'
            ELSE arg_min(status, CASE status
                WHEN 'oom' THEN 1 WHEN 'predicted-oom' THEN 2 WHEN 'skipped' THEN 3
                WHEN 'crash' THEN 4 WHEN 'timeout' THEN 5 WHEN 'error' THEN 6
                WHEN 'invalid' THEN 7 WHEN 'missing' THEN 8 ELSE 9 END) FILTER (WHERE status <> 'ok')
       END AS status,
       max(avg_ts) FILTER (WHERE kind = 'tg' AND status = 'ok') AS tg_ts,
       max(stddev_ts) FILTER (WHERE kind = 'tg' AND status = 'ok') AS tg_sd,
       bool_and(trusted) FILTER (WHERE kind = 'tg') AS tg_trusted,
       max(avg_ts) FILTER (WHERE kind = 'pp' AND status = 'ok') AS pp_ts,
       max(stddev_ts) FILTER (WHERE kind = 'pp' AND status = 'ok') AS pp_sd,
       -- the memory planner's prediction where there is one, else the KV buffer llama.cpp
       -- reported (the larger of the pp and tg contexts)
       max(coalesce(predicted_bytes, kv_bytes)) AS memory_bytes,
       CASE WHEN bool_or(predicted_bytes IS NOT NULL) THEN 'predicted'
            WHEN bool_or(kv_bytes IS NOT NULL) THEN 'kv_bytes' END AS memory_source
FROM c
GROUP BY model_name, host_class, config, type_k, type_v, n_depth;

-- The context ceiling: per configuration and host class, the deepest depth that fit, the
-- deepest depth planned, and what stopped it (the first depth past the ceiling that did not fit).
CREATE OR REPLACE VIEW context_ceiling AS
WITH d AS (
    SELECT model_name, host_class, config, type_k, type_v,
           max(n_depth) FILTER (WHERE fits) AS deepest_fit,
           max(n_depth) AS deepest_planned
    FROM depth_status
    GROUP BY ALL
)
SELECT d.*,
       (SELECT min(s.n_depth) FROM depth_status s
        WHERE s.model_name = d.model_name AND s.host_class = d.host_class AND s.config = d.config
          AND NOT s.fits AND s.n_depth > coalesce(d.deepest_fit, -1)) AS stopped_at,
       (SELECT arg_min(s.status, s.n_depth) FROM depth_status s
        WHERE s.model_name = d.model_name AND s.host_class = d.host_class AND s.config = d.config
          AND NOT s.fits AND s.n_depth > coalesce(d.deepest_fit, -1)) AS stopped_by,
       -- the bisected ceiling where `[speed] ceiling` measured one (measured_ceiling)
       m.ceiling_depth AS measured_depth, m.ceiling_fail_depth AS measured_fail_depth,
       m.ceiling_resolution AS measured_resolution, m.ceiling_bytes AS measured_bytes,
       m.ceiling_bound AS measured_bound, m.status AS measured_status
FROM d LEFT JOIN measured_ceiling m USING (model_name, host_class, config);

-- Each host's memory limit, for the memory chart's lines.
CREATE OR REPLACE VIEW host_memory AS
SELECT host_class, host, max(device_memory_total) AS device_memory_total
FROM results
WHERE kind IN ('pp', 'tg') AND device_memory_total IS NOT NULL
GROUP BY ALL;

-- Quality against storage cost: mean KL per configuration with its bits per value (the mean of
-- K's and V's, which hold the same number of values), and whether it is on the Pareto front
-- (no other trusted configuration is at least as cheap and at least as close, and better in one),
-- per backend the quality cells ran on (placement.quality_on = "every-backend" runs each on all).
CREATE OR REPLACE VIEW kl_vs_bits AS
WITH q AS (
    SELECT q.model_name, q.n_ctx, q.baseline, q.backend, q.config, q.type_k, q.type_v, q.kld_mean, q.kld_unc,
           (ck.bits_per_value + cv.bits_per_value) / 2 AS bits_per_value,
           len(coalesce(q.flags, [])) = 0 AS trusted
    FROM quality q
    LEFT JOIN cache_types ck ON ck.name = q.type_k
    LEFT JOIN cache_types cv ON cv.name = q.type_v
)
SELECT a.*,
       a.trusted AND a.bits_per_value IS NOT NULL AND NOT EXISTS (
           SELECT 1 FROM q b
           WHERE b.model_name = a.model_name AND b.n_ctx = a.n_ctx AND b.baseline = a.baseline
             AND b.backend IS NOT DISTINCT FROM a.backend AND b.trusted AND b.bits_per_value IS NOT NULL
             AND b.bits_per_value <= a.bits_per_value AND b.kld_mean <= a.kld_mean
             AND (b.bits_per_value < a.bits_per_value OR b.kld_mean < a.kld_mean)) AS on_front
FROM q a;

-- Quality per configuration over every n_ctx measured: a configuration is as good as its worst
-- context, and trusted only when every one of its quality cells is.
CREATE OR REPLACE VIEW config_quality AS
SELECT p.model_name, p.config, any_value(p.type_k) AS type_k, any_value(p.type_v) AS type_v,
       count(*) AS quality_cells,
       count(*) FILTER (WHERE r.status = 'ok' AND len(coalesce(r.flags, [])) = 0) AS trusted_cells,
       max(q.kld_mean) AS kld_mean,
       list(DISTINCT p.n_ctx ORDER BY p.n_ctx) AS n_ctx
FROM plan p LEFT JOIN results r USING (cell_id) LEFT JOIN quality q USING (cell_id)
WHERE p.kind = 'quality'
GROUP BY p.model_name, p.config;

-- Which configurations meet which quality budget (rule 1 of the recommendations).
CREATE OR REPLACE VIEW rec_candidates AS
SELECT b.budget, b.max_kld, b.budget_order, q.model_name, q.config, q.kld_mean
FROM kl_budgets b JOIN config_quality q
  ON q.trusted_cells = q.quality_cells AND q.kld_mean IS NOT NULL
 AND (b.max_kld IS NULL OR q.kld_mean <= b.max_kld);

-- Every model x host class x budget the recommendations answer, candidates or not.
CREATE OR REPLACE VIEW rec_questions AS
SELECT DISTINCT p.model_name, p.host_class, b.budget, b.max_kld, b.budget_order,
       coalesce((SELECT list(c.config ORDER BY c.kld_mean, c.config) FROM rec_candidates c
                 WHERE c.model_name = p.model_name AND c.budget = b.budget), []) AS candidates
FROM plan p, kl_budgets b
WHERE p.kind IN ('pp', 'tg');

-- Rule 2: the fastest generation at deep context. Among the candidates with a trusted tg
-- result on the host class, compare tg at the deepest depth every one of them ran; the fastest
-- wins, except that candidates within noise of it (difference <= sqrt(sd1^2 + sd2^2)) tie with
-- it and the tie goes to the lowest mean KL.
CREATE OR REPLACE VIEW recommend_fastest AS
WITH runs AS (
    SELECT c.budget, d.model_name, d.host_class, c.config, c.kld_mean, d.n_depth, d.tg_ts,
           coalesce(d.tg_sd, 0) AS tg_sd
    FROM rec_candidates c JOIN depth_status d USING (model_name, config)
    WHERE d.tg_ts IS NOT NULL AND d.tg_trusted
), field AS (
    SELECT budget, model_name, host_class, list(DISTINCT config ORDER BY config) AS ran,
           count(DISTINCT config) AS n
    FROM runs GROUP BY ALL
), common AS (
    SELECT r.budget, r.model_name, r.host_class, max(r.n_depth) AS n_depth
    FROM (SELECT budget, model_name, host_class, n_depth, count(DISTINCT config) AS n
          FROM runs GROUP BY ALL) r
    JOIN field f USING (budget, model_name, host_class)
    WHERE r.n = f.n
    GROUP BY ALL
), at_depth AS (
    SELECT r.*,
           max(r.tg_ts) OVER w AS best_ts,
           arg_max(r.tg_sd, r.tg_ts) OVER w AS best_sd
    FROM runs r JOIN common c USING (budget, model_name, host_class, n_depth)
    WINDOW w AS (PARTITION BY r.budget, r.model_name, r.host_class)
), ranked AS (
    SELECT *, best_ts - tg_ts <= sqrt(best_sd * best_sd + tg_sd * tg_sd) AS within_noise
    FROM at_depth
), pick AS (
    SELECT budget, model_name, host_class, n_depth,
           arg_min(config, {'k': kld_mean, 't': -tg_ts}) FILTER (WHERE within_noise) AS config,
           arg_min(kld_mean, {'k': kld_mean, 't': -tg_ts}) FILTER (WHERE within_noise) AS kld_mean,
           arg_min(tg_ts, {'k': kld_mean, 't': -tg_ts}) FILTER (WHERE within_noise) AS tg_ts,
           arg_min(tg_sd, {'k': kld_mean, 't': -tg_ts}) FILTER (WHERE within_noise) AS tg_sd,
           arg_max(config, tg_ts) AS fastest_measured,
           list(config ORDER BY tg_ts DESC) FILTER (WHERE within_noise) AS tied
    FROM ranked GROUP BY ALL
)
SELECT q.model_name, q.host_class, q.budget, q.max_kld, q.budget_order, q.candidates,
       coalesce(f.ran, []) AS ran_tg, p.n_depth, p.config, p.kld_mean, p.tg_ts, p.tg_sd,
       p.fastest_measured,
       [x FOR x IN coalesce(p.tied, []) IF x <> p.config] AS tied_with
FROM rec_questions q
LEFT JOIN field f USING (budget, model_name, host_class)
LEFT JOIN pick p USING (budget, model_name, host_class);

-- Rule 3: the largest context that fits. Among the candidates, the deepest depth at which
-- every speed cell ran ok and trusted; when several reach it, the smallest memory at that depth
-- wins (it has the most room left), then the lowest mean KL.
CREATE OR REPLACE VIEW recommend_context AS
WITH fit AS (
    SELECT c.budget, d.model_name, d.host_class, c.config, c.kld_mean, d.n_depth, d.memory_bytes
    FROM rec_candidates c JOIN depth_status d USING (model_name, config)
    WHERE d.fits AND d.trusted
), measured AS (  -- a bisected ceiling (`[speed] ceiling`) is finer than the grid's
    SELECT model_name, host_class, config, ceiling_depth, ceiling_bytes
    FROM measured_ceiling
    WHERE status = 'ok' AND ceiling_depth IS NOT NULL AND len(coalesce(flags, [])) = 0
), grid AS (
    SELECT budget, model_name, host_class, config,
           max(n_depth) AS deepest_fit,
           arg_max(memory_bytes, n_depth) AS memory_bytes,
           any_value(kld_mean) AS kld_mean
    FROM fit GROUP BY ALL
), ceiling AS (
    SELECT g.budget, g.model_name, g.host_class, g.config, g.kld_mean,
           greatest(g.deepest_fit, coalesce(m.ceiling_depth, 0)) AS deepest_fit,
           CASE WHEN m.ceiling_depth >= g.deepest_fit THEN m.ceiling_bytes ELSE g.memory_bytes END AS memory_bytes,
           m.ceiling_depth IS NOT NULL AS measured
    FROM grid g LEFT JOIN measured m USING (model_name, host_class, config)
), best AS (
    SELECT *, max(deepest_fit) OVER (PARTITION BY budget, model_name, host_class) AS best_depth
    FROM ceiling
), reached AS (  -- the candidates that reach the deepest depth, and the least memory among them
    SELECT *, min(coalesce(memory_bytes, 9e18)) OVER (PARTITION BY budget, model_name, host_class) AS least
    FROM best WHERE deepest_fit = best_depth
), pick AS (
    SELECT budget, model_name, host_class, best_depth AS n_depth,
           arg_min(config, {'m': coalesce(memory_bytes, 9e18), 'k': kld_mean}) AS config,
           arg_min(kld_mean, {'m': coalesce(memory_bytes, 9e18), 'k': kld_mean}) AS kld_mean,
           arg_min(memory_bytes, {'m': coalesce(memory_bytes, 9e18), 'k': kld_mean}) AS memory_bytes,
           list(config ORDER BY coalesce(memory_bytes, 9e18), kld_mean) AS reached,
           count(*) FILTER (WHERE coalesce(memory_bytes, 9e18) = least) > 1 AS memory_tie,
           bool_and(measured) AS measured
    FROM reached GROUP BY ALL
), planned AS (
    SELECT model_name, host_class, max(n_depth) AS deepest_planned
    FROM depth_status GROUP BY ALL
)
SELECT q.model_name, q.host_class, q.budget, q.max_kld, q.budget_order, q.candidates,
       p.n_depth, p.config, p.kld_mean, p.memory_bytes,
       [x FOR x IN coalesce(p.reached, []) IF x <> p.config] AS tied_with,
       coalesce(p.memory_tie, false) AS memory_tie,
       pl.deepest_planned, coalesce(p.measured, false) AS measured_ceiling,
       p.n_depth >= pl.deepest_planned AND NOT coalesce(p.measured, false) AS ceiling_not_reached
FROM rec_questions q
LEFT JOIN pick p USING (budget, model_name, host_class)
LEFT JOIN planned pl USING (model_name, host_class);

-- The same quality cell on two backends (placement.quality_on = "every-backend"): PPL and mean KL
-- on each, and their differences from per-token paired differences (the same chunk and position
-- on both), with the standard error of those differences over tokens. A difference of more than
-- 3 standard errors in nll or KL is beyond the noise: the backends compute it differently.
CREATE OR REPLACE VIEW cross_backend AS
WITH q AS (
    SELECT r.attempt_id, r.model_name, r.config, r.n_ctx, r.baseline, r.backend,
           len(coalesce(r.flags, [])) = 0 AS trusted
    FROM results r JOIN plan p USING (cell_id)
    WHERE r.kind = 'quality' AND r.status = 'ok' AND p.quality_backend <> ''
), pairs AS (
    SELECT a.model_name, a.config, a.n_ctx, a.baseline, a.backend AS backend_a, b.backend AS backend_b,
           a.attempt_id AS attempt_a, b.attempt_id AS attempt_b, a.trusted AND b.trusted AS trusted
    FROM q a JOIN q b
      ON a.model_name = b.model_name AND a.config = b.config AND a.n_ctx = b.n_ctx
     AND a.baseline = b.baseline AND a.backend < b.backend
), d AS (
    SELECT p.*, ta.nll AS nll_a, tb.nll AS nll_b, ta.kld AS kld_a, tb.kld AS kld_b
    FROM pairs p
    JOIN tokens_raw ta ON ta.attempt_id = p.attempt_a
    JOIN tokens_raw tb ON tb.attempt_id = p.attempt_b AND tb.chunk = ta.chunk AND tb.pos = ta.pos
), s AS (
    SELECT model_name, config, n_ctx, baseline, backend_a, backend_b, trusted,
           count(*) AS n_tokens,
           exp(avg(nll_a)) AS ppl_a, exp(avg(nll_b)) AS ppl_b,
           avg(kld_a) AS kld_a, avg(kld_b) AS kld_b,
           avg(nll_b - nll_a) AS d_nll,
           coalesce(stddev_samp(nll_b - nll_a) / sqrt(count(*)), 0) AS d_nll_unc,
           avg(kld_b - kld_a) AS d_kld,
           coalesce(stddev_samp(kld_b - kld_a) / sqrt(count(*)), 0) AS d_kld_unc
    FROM d
    GROUP BY ALL
)
SELECT *,
       -- PPL_b / PPL_a = exp(mean nll difference): the relative PPL difference, and its error
       exp(d_nll) - 1 AS ppl_rel_diff,
       exp(d_nll) * d_nll_unc AS ppl_rel_diff_unc,
       abs(d_nll) > 3 * d_nll_unc OR abs(d_kld) > 3 * d_kld_unc AS beyond_noise
FROM s;
