-- Per prompt, the four MLP neurons with the largest direct effect on target-minus-distractor at the last token.
SELECT p.text, p.target, s.layer, s.node_index AS neuron, round(s.value, 4) AS direct_effect,
       round(a.value, 4) AS activation
FROM mlp_write_to_final_residual_grad s
JOIN prompts p USING (prompt_id)
JOIN activations a ON a.prompt_id = s.prompt_id AND a.token = s.token AND a.layer = s.layer
     AND a.node_index = s.node_index AND a.dst = 'mlp_post_act' AND a.pass_type = 'forward'
QUALIFY row_number() OVER (PARTITION BY s.prompt_id ORDER BY s.value DESC) <= 4
ORDER BY p.prompt_id, s.value DESC
