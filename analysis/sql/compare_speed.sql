-- Speed of two runs side by side, like llama.cpp's compare-llama-bench.py: per matching cell,
-- B's tokens/s over A's. compare.py registers run_a_speed and run_b_speed (each run's
-- speed_by_depth.sql). Cells match on model, host class, test (pp512/tg128), depth and cache
-- configuration; a cell in one run only is kept with NULLs on the other side.
SELECT model_name, host_class, kind, test, n_depth, config,
       a.status AS status_a, b.status AS status_b,
       a.avg_ts AS ts_a, a.stddev_ts AS sd_a, b.avg_ts AS ts_b, b.stddev_ts AS sd_b,
       b.avg_ts / nullif(a.avg_ts, 0) AS speedup,
       -- the difference is within the run-to-run noise both runs measured
       abs(b.avg_ts - a.avg_ts) <= sqrt(coalesce(a.stddev_ts, 0) ^ 2 + coalesce(b.stddev_ts, 0) ^ 2)
           AS within_noise,
       a.model_name IS NOT NULL AND b.model_name IS NOT NULL AS matched
FROM run_a_speed a FULL OUTER JOIN run_b_speed b
     USING (model_name, host_class, kind, test, n_depth, config)
ORDER BY model_name, host_class, kind DESC, n_depth, config;
