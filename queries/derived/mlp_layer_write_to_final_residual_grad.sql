-- dst: mlp_layer_write_to_final_residual_grad
-- node_type: layer
-- needs: resid.delta_mlp forward; resid.ln_f.scale forward; a target; weights; with soft-capped logits, resid.post_mlp forward at the last layer
-- formula: dm[l,T,:] . g[T]
-- description: direct effect of each MLP block (bias included) on the target-minus-distractor logit
SELECT * FROM residual_direct_effects('resid_delta_mlp', 'mlp_layer_write_to_final_residual_grad', NULL, NULL)
