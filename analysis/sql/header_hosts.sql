-- The hosts the counted results ran on (report header).
SELECT DISTINCT host, host_class, device_name, device_memory_total
FROM results
WHERE host IS NOT NULL
ORDER BY host, host_class
