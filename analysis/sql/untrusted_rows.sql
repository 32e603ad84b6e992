-- The untrusted view in the order the report lists it.
SELECT * FROM untrusted ORDER BY kind, model_name, config, n_ctx, n_depth;
