-- Cells whose counted attempt is not ok, with the reason.
SELECT kind, model_name, config, n_ctx, n_depth, host_class, status, host, error_class,
       error_message
FROM cell_status
WHERE status NOT IN ('ok', 'missing')
ORDER BY kind, model_name, config, n_depth;
