-- `kvsweep status`: planned cells by model, kind and status.
SELECT model_name, kind, status, count(*) AS cells
FROM cell_status GROUP BY ALL ORDER BY 1, 2, 4 DESC;
