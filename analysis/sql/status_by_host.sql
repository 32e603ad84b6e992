-- `kvsweep status`: planned cells by host and status.
SELECT coalesce(host, '(not run)') AS host, status, count(*) AS cells
FROM cell_status GROUP BY ALL ORDER BY 1, 3 DESC;
