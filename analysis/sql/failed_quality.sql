-- Quality cells that did not end ok: the recommendations say what they cannot judge.
SELECT cell_id, model_name, config, n_ctx, status
FROM cell_status
WHERE kind = 'quality' AND status <> 'ok';
