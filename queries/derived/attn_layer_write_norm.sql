-- dst: attn_layer_write_norm
-- node_type: layer
-- needs: resid.delta_attn forward
-- formula: ||da[l,t,:]||
-- description: size of each attention block's output (bias included)
SELECT * FROM residual_norm('resid_delta_attn', 'attn_layer_write_norm')
