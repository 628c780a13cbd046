-- Dashboard: one row per ingest run (model, status, prompts, tokens, stored rows, duration).
-- Name columns are plain VARCHAR so every BI tool sees strings.
SELECT r.run_id, m.name AS model, r.status, r.objective, r.device, r.dtype,
       coalesce(p.prompts, 0) AS prompts, coalesce(p.tokens, 0) AS tokens, coalesce(a.n_rows, 0) AS n_rows,
       r.started_at, r.finished_at,
       date_diff('millisecond', r.started_at, r.finished_at) / 1000.0 AS seconds
FROM runs r
JOIN models m USING (model_id)
LEFT JOIN (SELECT run_id, count(*) AS prompts, sum(n_tokens) AS tokens FROM prompts GROUP BY run_id) p USING (run_id)
LEFT JOIN (
    SELECT pr.run_id, count(*) AS n_rows
    FROM activations a JOIN prompts pr USING (prompt_id)
    GROUP BY pr.run_id
) a USING (run_id)
