-- Direct effects on the objective's logit difference, in closed form from forward rows and weights:
-- with the final norm's scale s_f held constant, g[T] = (c_t u_target - c_d u_distractor) / s_f[T] (c the
-- slopes of soft-capped logits, 1 without a cap) and g is zero before the last token T, so each effect is
-- (activation x a weight-only factor) / s_f[T]. In a model that norms block outputs a node's write is
-- gain_post * write / s_post[l,T], the post-norm's scale held constant as s_f is: the factors carry the
-- gain, and the effect is divided by s_post too.
-- Arguments (t, d): NULL, NULL for each prompt's ingested pair; token ids for any other pair.

-- a[l,T,i] * (W_out[l][i,:] . g[T]). Stored rows meet their prompt's last token first (a filter that
-- reaches the scan), then each token's factor on its packed key (factor_key).
CREATE OR REPLACE MACRO mlp_direct_effects(t, d) AS TABLE
WITH f AS (SELECT * FROM keyed_token_factors(t, d, 'mlp'))
SELECT a.prompt_id, a.token, a.token2, a.layer, a.head, a.node_type, a.node_index,
       'mlp_write_to_final_residual_grad'::VARCHAR AS dst, 'forward' AS pass_type,
       (a.forward * (p.target_slope * ft.value - p.distractor_slope * coalesce(fd.value, 0))
        / (p.final_scale * coalesce(s.value, 1)))::FLOAT AS value
FROM facts a
JOIN prompt_objectives(t, d) p ON p.prompt_id = a.prompt_id AND p.last_token = a.token
JOIN f ft ON ft.k = factor_key(p.model_id, p.target_id, a.layer, a.node_index)
LEFT JOIN f fd ON fd.k = factor_key(p.model_id, p.distractor_id, a.layer, a.node_index)
LEFT JOIN post_block_scales('mlp') s ON s.prompt_id = a.prompt_id AND s.layer = a.layer AND s.token = a.token
WHERE a.dst = 'mlp_post_act' AND a.forward IS NOT NULL AND (s.value IS NOT NULL OR NOT p.post_block_norms);

-- p[l,T,k,h] * (v[l,k,kv(h),:] W_O[l][h]) . g[T]; query head h reads key/value head h // (H / H_kv).
-- value_dot joins every stored value row of a prompt (every key token up to its last) to the factors of
-- the query heads that read its key/value head, keyed by (layer, kv head << 12 | channel); the pattern's
-- rows then meet value_dot on the prompt's last token, which reaches their scan.
CREATE OR REPLACE MACRO attn_direct_effects(t, d) AS TABLE
WITH f AS (SELECT * FROM keyed_token_factors(t, d, 'attn')),
value_dot AS (
    SELECT v.prompt_id, p.last_token, any_value(p.post_block_norms) AS post_block_norms, v.layer,
           v.token AS key_token, ft.head,
           sum(v.forward * (p.target_slope * ft.value - p.distractor_slope * coalesce(fd.value, 0)))
           / any_value(p.final_scale) AS value
    FROM facts v
    JOIN prompt_objectives(t, d) p ON p.prompt_id = v.prompt_id AND v.token <= p.last_token
    JOIN f ft ON ft.k = factor_key(p.model_id, p.target_id, v.layer, v.head::BIGINT << 12 | v.node_index)
    LEFT JOIN f fd
      ON fd.k = factor_key(p.model_id, p.distractor_id, v.layer, v.head::BIGINT << 12 | v.node_index) AND fd.head = ft.head
    WHERE v.dst = 'attn_value' AND v.forward IS NOT NULL
    GROUP BY v.prompt_id, p.last_token, v.layer, v.token, ft.head
)
SELECT a.prompt_id, a.token, a.token2, a.layer, a.head, a.node_type, a.node_index,
       'unflattened_attn_write_to_final_residual_grad'::VARCHAR AS dst, 'forward' AS pass_type,
       (a.forward * vd.value / coalesce(s.value, 1))::FLOAT AS value
FROM facts a
JOIN value_dot vd
  ON vd.prompt_id = a.prompt_id AND vd.last_token = a.token AND vd.layer = a.layer AND vd.key_token = a.token2
 AND vd.head = a.node_index
LEFT JOIN post_block_scales('attn') s ON s.prompt_id = a.prompt_id AND s.layer = a.layer AND s.token = a.token
WHERE a.dst = 'attn_qk_probs' AND a.forward IS NOT NULL AND (s.value IS NOT NULL OR NOT vd.post_block_norms);

-- b[l] . g[T] for the output bias of block `block` ('attn' or 'mlp'), as it joins the residual
-- (gain_post * b / s_post[l,T] where the model norms block outputs): with the nodes' direct effects it
-- makes up the block's (docs/DERIVED_SCALARS.md, identities 1 and 2). One row per prompt and layer.
CREATE OR REPLACE MACRO bias_direct_effects(block, t, d) AS TABLE
SELECT f.prompt_id, f.last_token AS token, f.layer, (f.value / (f.final_scale * coalesce(s.value, 1))) AS value
FROM pair_join_factors(t, d, block || '_bias') f
LEFT JOIN post_block_scales(block) s ON s.prompt_id = f.prompt_id AND s.layer = f.layer AND s.token = f.last_token
WHERE s.value IS NOT NULL OR NOT f.post_block_norms;

-- x[l,T,:] . g[T] for a stored residual-stream vector (source dst), as stored (block outputs after any
-- post-block norm); one row per layer
CREATE OR REPLACE MACRO residual_direct_effects(source, out_dst, t, d) AS TABLE
SELECT a.prompt_id, a.token, NULL::SMALLINT AS token2, a.layer, NULL::SMALLINT AS head, 'layer'::VARCHAR AS node_type,
       0 AS node_index, out_dst::VARCHAR AS dst, a.pass_type, (sum(a.value * f.value) / any_value(f.final_scale))::FLOAT AS value
FROM pair_join_factors(t, d, 'residual') f
JOIN activations a ON a.prompt_id = f.prompt_id AND a.token = f.last_token AND a.node_index = f.node_index
WHERE a.dst = source AND a.pass_type = 'forward'
GROUP BY a.prompt_id, a.token, a.layer, a.pass_type, out_dst;

-- Every node's direct effect for the pair (target, distractor) -- token ids of the prompts' model --
-- whether or not that pair was ever ingested: MLP neurons, attention nodes and the embedding.
CREATE OR REPLACE MACRO direct_effects(target, distractor) AS TABLE
SELECT * FROM mlp_direct_effects(target, distractor)
UNION ALL SELECT * FROM attn_direct_effects(target, distractor)
UNION ALL SELECT * FROM residual_direct_effects('resid_post_embedding', 'resid_post_embedding_proj_to_final_residual_grad',
                                                 target, distractor)
UNION ALL SELECT * FROM pair_refusal(target, distractor);
