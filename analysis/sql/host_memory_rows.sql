-- Each host's memory, for the memory charts' lines.
SELECT * FROM host_memory ORDER BY host;
