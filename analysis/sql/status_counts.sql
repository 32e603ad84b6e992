-- Where every planned cell stands, by status.
SELECT status, count(*) AS cells FROM cell_status GROUP BY status ORDER BY cells DESC;
