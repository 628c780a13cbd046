-- dst: always_one
-- node_type: layer
-- needs: tokens
-- formula: 1 for every token
-- description: the Activation column of embedding nodes in the node table (one node per token)
SELECT prompt_id, position AS token, NULL::SMALLINT AS token2, NULL::SMALLINT AS layer, NULL::SMALLINT AS head,
       'layer'::node_type_name AS node_type, 0 AS node_index, 'always_one'::dst_name AS dst,
       'forward'::pass_type_name AS pass_type, 1::FLOAT AS value
FROM tokens
