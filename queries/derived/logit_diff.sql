-- dst: logit_diff
-- node_type: layer
-- needs: logits forward (the target and distractor rows are always stored); a target
-- formula: logit[T,target] - logit[T,distractor]  (just the target's logit without a distractor)
-- description: the backward objective of prompts with a target, recomputed from stored logits
SELECT p.prompt_id, l.token, NULL::SMALLINT AS token2, NULL::SMALLINT AS layer, NULL::SMALLINT AS head,
       'layer'::VARCHAR AS node_type, 0 AS node_index, 'logit_diff'::VARCHAR AS dst, l.pass_type,
       sum(CASE WHEN l.node_index = p.target_id THEN l.value ELSE -l.value END)::FLOAT AS value
FROM prompts p
JOIN activations l
  ON l.prompt_id = p.prompt_id AND l.token = p.n_tokens - 1 AND l.node_index IN (p.target_id, p.distractor_id)
WHERE p.target_id IS NOT NULL AND l.dst = 'logits' AND l.pass_type = 'forward'
GROUP BY p.prompt_id, l.token, l.pass_type
