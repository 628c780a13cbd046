-- dst: resid_post_embedding_proj_to_final_residual_grad
-- node_type: layer
-- needs: resid.post_emb forward; resid.ln_f.scale forward; a target; weights; with soft-capped logits, resid.post_mlp forward at the last layer
-- formula: e[T,:] . g[T]
-- description: direct effect of the last token's embedding on the target-minus-distractor logit
SELECT * FROM residual_direct_effects('resid_post_embedding', 'resid_post_embedding_proj_to_final_residual_grad', NULL, NULL)
