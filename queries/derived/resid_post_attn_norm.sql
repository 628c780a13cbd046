-- dst: resid_post_attn_norm
-- node_type: layer
-- needs: resid.post_attn forward
-- formula: ||r_attn[l,t,:]||
-- description: size of the residual stream after each layer's attention
SELECT * FROM residual_norm('resid_post_attn', 'resid_post_attn_norm')
