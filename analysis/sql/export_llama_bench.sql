-- Speed results in llama-bench's fields (tools/llama-bench/llama-bench.cpp, test::get_fields),
-- one row per counted ok pp/tg cell. Settings kvsweep never changes from llama.cpp's defaults
-- carry llama-bench's default values for them; analysis/export.py adds build_commit overrides.
SELECT
    build_commit,
    0 AS build_number,                       -- libllama does not expose llama.cpp's build number
    cpu_info,
    coalesce(gpu_info, '') AS gpu_info,
    backends,
    model_filename,
    model_type,
    model_size,
    model_n_params,
    n_batch,
    n_ubatch,
    n_threads,
    '0x0' AS cpu_mask,                       -- no CPU mask, not strict, default polling: what
    false AS cpu_strict,                     -- llama.cpp's default threadpool does for a
    50 AS poll,                              -- context without one attached
    type_k,
    type_v,
    n_gpu_layers,
    0 AS n_cpu_moe,
    'layer' AS split_mode,
    0 AS main_gpu,
    false AS no_kv_offload,
    CASE flash_attn WHEN 'on' THEN 1 WHEN 'off' THEN 0 ELSE -1 END AS flash_attn,
    'auto' AS devices,
    '0.00' AS tensor_split,
    'none' AS tensor_buft_overrides,
    'auto' AS load_mode,
    'auto' AS lazy_mode,
    false AS embeddings,
    0 AS no_op_offload,
    false AS no_host,
    true AS repack,                          -- llama_model_default_params().use_extra_bufts
    0 AS fit_target,
    0 AS fit_min_ctx,
    n_prompt,
    n_gen,
    n_depth,
    test_time,
    avg_ns,
    stddev_ns,
    avg_ts,
    stddev_ts,
    samples_ns,
    samples_ts
FROM results
WHERE kind IN ('pp', 'tg') AND status = 'ok'
ORDER BY model_name, type_k, type_v, n_depth, kind DESC, test_time;
