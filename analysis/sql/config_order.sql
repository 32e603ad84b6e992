-- Configurations in the order the matrix lists them (the plan's row order): the report's
-- column and row order.
SELECT config, min(rowid) AS first
FROM (SELECT config, row_number() OVER () AS rowid FROM plan)
GROUP BY config
ORDER BY first;
