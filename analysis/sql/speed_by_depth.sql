-- Generation (tg) and prompt (pp) tokens/s by depth and configuration, long form; the report
-- pivots it into the seeds' layout (a row per depth, a column per configuration). Cells that
-- ran out of memory or were skipped after one are included with their status.
SELECT r.model_name, r.host_class, r.kind, r.n_depth, r.config, r.status, r.avg_ts, r.stddev_ts
FROM results r
WHERE r.kind IN ('pp', 'tg')
ORDER BY r.model_name, r.host_class, r.kind, r.n_depth;
