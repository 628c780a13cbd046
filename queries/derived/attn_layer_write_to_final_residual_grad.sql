-- dst: attn_layer_write_to_final_residual_grad
-- node_type: layer
-- needs: resid.delta_attn forward; resid.ln_f.scale forward; a target; weights; with soft-capped logits, resid.post_mlp forward at the last layer
-- formula: da[l,T,:] . g[T]
-- description: direct effect of each attention block (bias included) on the target-minus-distractor logit
SELECT * FROM residual_direct_effects('resid_delta_attn', 'attn_layer_write_to_final_residual_grad', NULL, NULL)
