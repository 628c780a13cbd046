-- dst: loss
-- node_type: layer
-- needs: a backward pass
-- formula: the objective the backward pass ran on (logit_diff with a target; with --objective-node the node's activation at its token; else mean next-token cross-entropy)
-- description: the objective value per prompt, as computed in torch at ingest
SELECT prompt_id, (n_tokens - 1)::SMALLINT AS token, NULL::SMALLINT AS token2, NULL::SMALLINT AS layer,
       NULL::SMALLINT AS head, 'layer'::VARCHAR AS node_type, 0 AS node_index, 'loss'::VARCHAR AS dst,
       'forward'::VARCHAR AS pass_type, objective::FLOAT AS value
FROM prompts
WHERE objective IS NOT NULL
