-- What differs between two runs besides the cells: build, bindings, backend, device, threads,
-- flash attention, environment, files. compare.py registers run_a_results and run_b_results
-- (each run's results view). One row per setting whose values differ.
WITH settings AS (
    SELECT DISTINCT
        run, build_commit, llama_cpp_python_version, ggml_version, backends, device_name,
        host, host_class, CAST(n_threads AS VARCHAR) AS n_threads, flash_attn,
        CAST(flash_attn_enabled AS VARCHAR) AS flash_attn_enabled, env,
        CAST(attn_rot_k AS VARCHAR) AS attn_rot_k, CAST(attn_rot_v AS VARCHAR) AS attn_rot_v,
        model_sha256, corpus_sha256, kvsweep_version
    FROM (SELECT 'a' AS run, * FROM run_a_results
          UNION ALL BY NAME
          SELECT 'b' AS run, * FROM run_b_results)
), long AS (
    UNPIVOT settings ON COLUMNS(* EXCLUDE (run)) INTO NAME setting VALUE value
), la AS (SELECT setting, list(DISTINCT value ORDER BY value) AS values_a FROM long WHERE run = 'a' GROUP BY setting),
   lb AS (SELECT setting, list(DISTINCT value ORDER BY value) AS values_b FROM long WHERE run = 'b' GROUP BY setting)
SELECT setting, coalesce(values_a, []) AS values_a, coalesce(values_b, []) AS values_b
FROM la FULL OUTER JOIN lb USING (setting)
WHERE coalesce(values_a, []) <> coalesce(values_b, [])
ORDER BY setting;
