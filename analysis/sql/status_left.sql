-- `kvsweep status`: what is left to do (not ok, and not skipped after an OOM).
SELECT kind, model_name, count(*) AS cells
FROM cell_status
WHERE status <> 'ok' AND status NOT IN ('skipped')
GROUP BY ALL ORDER BY 1, 2;
