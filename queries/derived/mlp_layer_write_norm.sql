-- dst: mlp_layer_write_norm
-- node_type: layer
-- needs: resid.delta_mlp forward
-- formula: ||dm[l,t,:]||
-- description: size of each MLP block's output (bias included)
SELECT * FROM residual_norm('resid_delta_mlp', 'mlp_layer_write_norm')
