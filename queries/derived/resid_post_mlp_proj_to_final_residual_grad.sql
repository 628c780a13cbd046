-- dst: resid_post_mlp_proj_to_final_residual_grad
-- node_type: layer
-- needs: resid.post_mlp forward; resid.ln_f.scale forward; a target; weights; with soft-capped logits, resid.post_mlp forward at the last layer
-- formula: r_mlp[l,T,:] . g[T]  (at l = L-1 this is the value itself; the reference system reports 0 there)
-- description: projection of the residual stream after each MLP onto the final-residual gradient
SELECT * FROM residual_direct_effects('resid_post_mlp', 'resid_post_mlp_proj_to_final_residual_grad', NULL, NULL)
