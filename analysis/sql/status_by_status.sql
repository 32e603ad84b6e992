-- `kvsweep status`: planned cells by status.
SELECT status, count(*) AS cells FROM cell_status GROUP BY ALL ORDER BY 2 DESC;
