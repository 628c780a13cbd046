-- dst: unflattened_attn_write_to_final_residual_grad
-- node_type: attention_head
-- needs: attn.qk_probs forward; attn.v forward; resid.ln_f.scale forward; a target; weights; with soft-capped logits, resid.post_mlp forward at the last layer; with norms after attention, attn_post_ln.scale forward
-- formula: p[l,T,k,h] * (v[l,k,kv(h),:] W_O[l][h]) . g[T]; with a norm after attention p * (gain_post * (v W_O[h])) . g[T] / s_post[l,T]
-- description: direct effect of attention node (T, k, h) on the target-minus-distractor logit
SELECT * FROM attn_direct_effects(NULL, NULL)
