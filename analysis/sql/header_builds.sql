-- The llama.cpp builds the counted results ran on (report header). A TurboQuant build runs turbo
-- caches on the CPU backend through a slow scalar path: `cpu_turbo_speed` says when speed cells
-- of turbo types ran there (their figures say nothing about Metal or CUDA: docs/forks.md).
SELECT coalesce(build_name, 'mainline') AS build_name, build_commit, llama_cpp_python_version, backends,
       count(*) FILTER (WHERE kind IN ('pp', 'tg') AND backend = 'CPU'
                        AND (type_k LIKE 'turbo%' OR type_v LIKE 'turbo%')) AS cpu_turbo_speed
FROM results
WHERE build_commit IS NOT NULL
GROUP BY ALL
ORDER BY build_name, build_commit
