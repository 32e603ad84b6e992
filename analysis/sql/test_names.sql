-- llama-bench's test name (pp512, tg128) per model and speed kind, for table headings.
SELECT DISTINCT model_name, kind,
       CASE WHEN kind = 'pp' THEN 'pp' || n_prompt ELSE 'tg' || n_gen END AS test
FROM plan
WHERE kind IN ('pp', 'tg');
