-- dst: resid_post_attn_proj_to_final_residual_grad
-- node_type: layer
-- needs: resid.post_attn forward; resid.ln_f.scale forward; a target; weights; with soft-capped logits, resid.post_mlp forward at the last layer
-- formula: r_attn[l,T,:] . g[T]
-- description: projection of the residual stream after each attention block onto the final-residual gradient
SELECT * FROM residual_direct_effects('resid_post_attn', 'resid_post_attn_proj_to_final_residual_grad', NULL, NULL)
