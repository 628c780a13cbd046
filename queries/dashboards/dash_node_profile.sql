-- Dashboard: one node's profile across the dataset, for every (model, dst, pass, layer, head, node):
-- count, mean, spread, extremes, fraction non-zero and median. Filter on dst, layer and node_index (the
-- filters reach the scan below the GROUP BY, so one node costs one pass over its rows).
SELECT p.model_id, s.dst::VARCHAR AS dst, s.pass_type::VARCHAR AS pass_type, s.node_type::VARCHAR AS node_type,
       s.layer, s.head, s.node_index,
       count(*) AS n, avg(s.value) AS mean, stddev_samp(s.value) AS std, min(s.value) AS min_value,
       max(s.value) AS max_value, avg(CASE WHEN s.value <> 0 THEN 1.0 ELSE 0.0 END) AS frac_nonzero,
       median(s.value) AS median, count(DISTINCT s.prompt_id) AS prompts
FROM scalars s
JOIN prompts p USING (prompt_id)
GROUP BY p.model_id, s.dst, s.pass_type, s.node_type, s.layer, s.head, s.node_index
