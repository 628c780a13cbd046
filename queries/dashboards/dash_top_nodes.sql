-- Dashboard: the reference node table per prompt. For every prompt, the MLP neurons and attention nodes
-- (query token, key token, head) with the 10 largest and 10 smallest act-times-grad, with their
-- activation, write magnitude, direct effect and act-times-grad side by side. Filter on prompt_id.
-- Act-times-grad is taken from the raw forward and backward rows (exactly the derived view's formula),
-- so the ranking works on any file with a backward pass; the write and direct-effect columns read the
-- derived views through `scalars` and are NULL where those are absent.
WITH nodes AS (
    SELECT prompt_id, node_type::VARCHAR AS node_type, layer, token, token2, node_index,
           max(value) FILTER (WHERE dst IN ('mlp_post_act', 'attn_qk_probs') AND pass_type = 'forward') AS activation,
           max(value) FILTER (WHERE dst IN ('mlp_post_act', 'attn_qk_probs') AND pass_type = 'backward') AS grad,
           max(value) FILTER (WHERE dst IN ('mlp_write_norm', 'unflattened_attn_write_norm')) AS write_norm,
           max(value) FILTER (
               WHERE dst IN ('mlp_write_to_final_residual_grad', 'unflattened_attn_write_to_final_residual_grad')
           ) AS direct_effect
    FROM scalars
    WHERE node_type IN ('mlp_neuron', 'attention_head')
      AND dst IN ('mlp_post_act', 'attn_qk_probs', 'mlp_write_norm', 'unflattened_attn_write_norm',
                  'mlp_write_to_final_residual_grad', 'unflattened_attn_write_to_final_residual_grad')
    GROUP BY prompt_id, node_type, layer, token, token2, node_index
),
ranked AS (
    SELECT *, activation * grad AS act_times_grad,
           row_number() OVER (PARTITION BY prompt_id ORDER BY activation * grad DESC, node_type, layer, token, token2, node_index) AS rank_top,
           row_number() OVER (PARTITION BY prompt_id ORDER BY activation * grad ASC, node_type, layer, token, token2, node_index) AS rank_bottom
    FROM nodes
    WHERE grad IS NOT NULL
)
SELECT r.prompt_id, p.text AS prompt_text, CASE WHEN r.rank_top <= 10 THEN 'top' ELSE 'bottom' END AS side,
       least(r.rank_top, r.rank_bottom) AS rank, r.node_type, r.layer, r.token, t1.text AS token_text,
       r.token2, t2.text AS token2_text, r.node_index, r.activation, r.write_norm, r.direct_effect, r.act_times_grad
FROM ranked r
JOIN prompts p USING (prompt_id)
LEFT JOIN tokens t1 ON t1.prompt_id = r.prompt_id AND t1.token = r.token
LEFT JOIN tokens t2 ON t2.prompt_id = r.prompt_id AND t2.token = r.token2
WHERE r.rank_top <= 10 OR r.rank_bottom <= 10
