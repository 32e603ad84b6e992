-- The configurations each model's speed sweep covers on each host class.
SELECT DISTINCT model_name, host_class, config
FROM plan
WHERE kind IN ('pp', 'tg');
