-- dst: resid_post_mlp_norm
-- node_type: layer
-- needs: resid.post_mlp forward
-- formula: ||r_mlp[l,t,:]||
-- description: size of the residual stream after each layer's MLP
SELECT * FROM residual_norm('resid_post_mlp', 'resid_post_mlp_norm')
