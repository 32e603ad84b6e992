-- Generation (tg) and prompt (pp) tokens/s by depth and configuration, long form; the report
-- pivots it into the seeds' layout (a row per depth, a column per configuration). Every planned
-- speed cell has a row: cells that ran out of memory, were skipped after one, failed or have
-- not run yet carry their status and no figures.
SELECT p.model_name, p.host_class, p.kind, p.n_depth, p.config,
       CASE WHEN p.kind = 'pp' THEN 'pp' || p.n_prompt ELSE 'tg' || p.n_gen END AS test,
       coalesce(r.status, 'missing') AS status, coalesce(r.flags, []) AS flags,
       CASE WHEN r.status = 'ok' THEN r.avg_ts END AS avg_ts,
       CASE WHEN r.status = 'ok' THEN r.stddev_ts END AS stddev_ts,
       -- with `[speed] precision`: the repetitions that ran (the report says how many)
       p.precision, CASE WHEN r.status = 'ok' THEN len(r.samples_ts) END AS repetitions_run
FROM plan p LEFT JOIN results r USING (cell_id)
WHERE p.kind IN ('pp', 'tg')
ORDER BY p.model_name, p.host_class, p.kind, p.n_depth;
