-- dst: always_one
-- node_type: layer
-- needs: tokens
-- formula: 1 for every token
-- description: the Activation column of embedding nodes in the node table (one node per token)
SELECT prompt_id, token, NULL::SMALLINT AS token2, NULL::SMALLINT AS layer, NULL::SMALLINT AS head,
       'layer'::VARCHAR AS node_type, 0 AS node_index, 'always_one'::VARCHAR AS dst,
       'forward'::VARCHAR AS pass_type, 1::FLOAT AS value
FROM tokens
