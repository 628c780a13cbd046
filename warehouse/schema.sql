-- The warehouse contract: the tables of the lake and its core view. Applied by warehouse/ when a new
-- warehouse is created; read it to learn the schema.
--
-- The warehouse is a DuckLake (a catalog database plus Parquet data files). DuckLake has no ENUM types
-- and no key constraints: name columns are VARCHAR (Parquet dictionary-encodes them, so a name costs
-- next to nothing per row), and ids are unique because one writer assigns them.

CREATE TABLE IF NOT EXISTS meta (
    key VARCHAR NOT NULL,
    value VARCHAR NOT NULL
);

-- One row per checkpoint: shapes, and a hash of the weights so the same name can never mean two models.
CREATE TABLE IF NOT EXISTS models (
    model_id INTEGER NOT NULL,
    name VARCHAR NOT NULL,
    family VARCHAR NOT NULL,          -- 'gpt2' or 'llama'
    checkpoint_hash VARCHAR NOT NULL,
    n_layers INTEGER NOT NULL,
    d_model INTEGER NOT NULL,
    n_heads INTEGER NOT NULL,
    n_kv_heads INTEGER NOT NULL,
    d_head INTEGER NOT NULL,
    d_mlp INTEGER NOT NULL,
    vocab_size INTEGER NOT NULL,
    n_ctx INTEGER NOT NULL,
    norm VARCHAR NOT NULL,            -- 'layernorm' (mean removed) or 'rmsnorm'
    config JSON
);

-- Provenance of one ingest command.
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER NOT NULL,
    model_id INTEGER NOT NULL,
    objective VARCHAR NOT NULL,       -- 'logit_diff' (target given), 'next_token_ce', or 'node:DST:LAYER:NODE@TOKEN'
    locations VARCHAR[] NOT NULL,     -- 'location:pass' pairs stored
    layers INTEGER[],                 -- NULL: every layer
    software_version VARCHAR NOT NULL,
    device VARCHAR NOT NULL,
    dtype VARCHAR NOT NULL,           -- the model pass's dtype
    precision VARCHAR NOT NULL,       -- stored values: 'float32', or 'bfloat16' (rounded, kept in FLOAT)
    prepend_bos BOOLEAN NOT NULL,     -- a BOS token was put before every prompt
    special_tokens VARCHAR NOT NULL,  -- 'special': special-token text encodes as the token; 'text': spelled out
    started_at TIMESTAMP NOT NULL,
    finished_at TIMESTAMP,
    status VARCHAR NOT NULL,          -- running, completed, failed, interrupted
    n_prompts INTEGER NOT NULL,
    skipped JSON,                     -- [{line, reason}] for prompts not stored
    message VARCHAR,
    summarised_through INTEGER,       -- the run's per-node summaries cover its prompts up to this id (NULL: none)
    store VARCHAR,                    -- what it kept: 'facts,summaries', 'facts' or 'summaries' (ingest --store)
    facts_every INTEGER               -- facts kept of every N-th prompt (ingest --facts-every; 1: of every one)
);

CREATE TABLE IF NOT EXISTS prompts (
    prompt_id INTEGER NOT NULL,
    run_id INTEGER NOT NULL,
    model_id INTEGER NOT NULL,
    prompt_key VARCHAR NOT NULL,      -- hash of model, text, target, distractor and capture settings
    text VARCHAR NOT NULL,
    n_tokens INTEGER NOT NULL,
    target VARCHAR,
    distractor VARCHAR,
    target_id INTEGER,
    distractor_id INTEGER,
    objective DOUBLE,                 -- the backward objective's value (NULL without a backward pass)
    facts_stored BOOLEAN,             -- false: only its tokens and summaries were kept (ingest --store summaries)
    objective_node VARCHAR            -- 'DST:LAYER:NODE@TOKEN' (@QUERY,KEY for attention) the backward pass started
                                      -- from (ingest --objective-node; objective is its activation); else NULL
);

-- `bytes` is the token's exact bytes; `text` shows them, a UTF-8 character split across tokens on the
-- token that completes it and the bytes before it as \xNN escapes (warehouse/token_text.py). bytes is
-- NULL only for tokens converted from a single-file warehouse, which kept the text alone.
CREATE TABLE IF NOT EXISTS tokens (
    prompt_id INTEGER NOT NULL,
    token SMALLINT NOT NULL,  -- the token's position in its prompt, as activations.token
    token_id INTEGER NOT NULL,
    text VARCHAR NOT NULL,
    bytes BLOB
);

-- The physical fact table: one row per captured element, both passes in it (NULL where a pass was not
-- stored). token2 is the attended-to token of token-pair locations, head the head of per-head
-- locations whose node is a channel (for locations whose node is the head, node_index holds it), layer
-- is NULL for locations without one. Rows are written in (dst, layer, prompt, token, node) order, so
-- Parquet's row-group statistics let a reader skip the dsts and layers it does not ask for.
CREATE TABLE IF NOT EXISTS facts (
    prompt_id INTEGER NOT NULL,
    token SMALLINT NOT NULL,
    token2 SMALLINT,
    layer SMALLINT,
    head SMALLINT,
    node_type VARCHAR NOT NULL,
    node_index INTEGER NOT NULL,
    dst VARCHAR NOT NULL,
    forward FLOAT,
    backward FLOAT
);

-- The design card's long format: one row per stored scalar and pass. A filter on pass_type reaches the
-- scan of one column, and views that pair passes read `facts` directly.
CREATE OR REPLACE VIEW activations AS
SELECT prompt_id, token, token2, layer, head, node_type, node_index, dst, 'forward' AS pass_type, forward AS value
FROM facts WHERE forward IS NOT NULL
UNION ALL
SELECT prompt_id, token, token2, layer, head, node_type, node_index, dst, 'backward' AS pass_type, backward AS value
FROM facts WHERE backward IS NOT NULL;

-- Weights the views read, in the registry's standard layout: head is the privileged axis of per-head
-- matrices, row_index the input axis, col_index the output axis (NULL for vectors).
CREATE TABLE IF NOT EXISTS weights (
    model_id INTEGER NOT NULL,
    location VARCHAR NOT NULL,
    layer SMALLINT,
    head SMALLINT,
    row_index INTEGER NOT NULL,
    col_index INTEGER,
    value FLOAT NOT NULL
);

-- The residual-stream vectors of every layer's (and SAE's) matrix that reads or writes the residual stream,
-- the same values as their `weights` rows, one FLOAT[d_model] list per vector ordered by residual channel: a
-- writer's rows (mlp.to_residual, attn.to_residual per head, <prefix>.to_residual; vector_index = row_index)
-- and a reader's columns (mlp.to_hidden, mlp.to_gate, attn.to_query, attn.to_key, attn.to_value per head,
-- autoencoder.to_latent; vector_index = col_index). The edge macros dot them with a read or write direction
-- (list_dot_product), one row per vector instead of one per value. Not the embeddings or unembedding.
CREATE TABLE IF NOT EXISTS weight_vectors (
    model_id INTEGER NOT NULL,
    location VARCHAR NOT NULL,
    layer SMALLINT,
    head SMALLINT,
    vector_index INTEGER NOT NULL,
    vector FLOAT[] NOT NULL
);

-- The bytes and display text of every vocabulary id, so SQL can show and look up tokens without the
-- tokenizer (text: bytes that are not a whole UTF-8 character are \xNN escapes).
CREATE TABLE IF NOT EXISTS vocab (
    model_id INTEGER NOT NULL,
    token_id INTEGER NOT NULL,
    text VARCHAR NOT NULL,
    bytes BLOB
);

-- One row per sparse autoencoder spliced into an ingest (actwh ingest --sae): a model holds one SAE per
-- latent node type and layer, so its latents' rows (dst online_*autoencoder_latent) and its write
-- weights (location '<prefix>.to_residual') are keyed by (model_id, node_type, layer).
CREATE TABLE IF NOT EXISTS saes (
    model_id INTEGER NOT NULL,
    sae_id INTEGER NOT NULL,
    format VARCHAR NOT NULL,          -- 'saelens', 'sparsify' or 'gemma_scope'
    architecture VARCHAR NOT NULL,    -- 'standard', 'jumprelu', 'topk' or 'gated'
    hook_name VARCHAR NOT NULL,       -- the hook point its files name (TransformerLens or Hugging Face)
    location VARCHAR NOT NULL,        -- the registry location it reads
    layer SMALLINT,                   -- that location's layer (NULL: the embedding)
    node_type VARCHAR NOT NULL,       -- its latents' node type
    latent_dst VARCHAR NOT NULL,
    error_dst VARCHAR NOT NULL,
    d_in INTEGER NOT NULL,
    d_sae INTEGER NOT NULL,
    k INTEGER,                        -- topk only
    sha256 VARCHAR NOT NULL,          -- of its weights file, then its config file (if any)
    path VARCHAR NOT NULL
);

-- Weight-only factors the derived views join against, computed once per model (and once per target or
-- distractor token) by warehouse/ at ingest, from queries/support/10_weight_factors.sql.

-- ||W_out[l][i,:]||: the write norm of MLP neuron i per unit activation (||gain_post[l] * W_out[l][i,:]|| in
-- models that norm the MLP's output, whose scale the views then divide by).
CREATE TABLE IF NOT EXISTS mlp_out_norms (
    model_id INTEGER NOT NULL,
    layer SMALLINT NOT NULL,
    node_index INTEGER NOT NULL,
    value FLOAT NOT NULL
);

-- For one vocabulary token v, with u = P(gain_f * W_U[:, v]) (P removes the mean for LayerNorm models):
-- kind 'residual' holds u itself (node_index = channel), 'mlp' W_out[l][i,:] . u, 'attn' W_O[l][h][c,:] . u,
-- 'attn_bias' b_O[l] . u, 'mlp_bias' b_out[l] . u (u times the gain of the norm after that block in models
-- that norm block outputs) and 'final_bias' bias_f . W_U[:, v]. Divided by the final norm's scale at the
-- last token (and any post-block norm's) they give every direct effect on the logit of v, for any
-- prompt, without a backward pass (times the logit's slope where logits are soft-capped).
CREATE TABLE IF NOT EXISTS direction_factors (
    model_id INTEGER NOT NULL,
    token_id INTEGER NOT NULL,
    kind VARCHAR NOT NULL,
    layer SMALLINT,
    head SMALLINT,
    node_index INTEGER NOT NULL,
    value DOUBLE NOT NULL
);

-- Per-node summaries of the stored rows (warehouse/summaries.py): one row per run (or pool of runs merged,
-- summary_pools) and (dst, pass, layer, head, node, first_token), rewritten as the ingest flushes its
-- running figures; they cover each run's prompts up to runs.summarised_through. The answer for a node
-- across runs is the merge of its rows (counts and sums add, min/max combine, histograms add).
-- first_token: the rows at position 0 (true) or every later position (false). layer and head hold -1
-- where the dst has none. Raw dsts except logits (stored partially), and the act-times-grad dsts
-- mlp_act_times_grad and unflattened_attn_act_times_grad (forward * backward, as their views).
CREATE TABLE IF NOT EXISTS node_summaries (
    run_id INTEGER NOT NULL,
    dst VARCHAR NOT NULL,
    pass_type VARCHAR NOT NULL,
    layer SMALLINT NOT NULL,
    head SMALLINT NOT NULL,
    node_type VARCHAR NOT NULL,
    node_index INTEGER NOT NULL,
    first_token BOOLEAN NOT NULL,
    n BIGINT NOT NULL,                -- rows summarised
    sum DOUBLE NOT NULL,
    sum_sq DOUBLE NOT NULL,
    sum_abs DOUBLE NOT NULL,
    min FLOAT,                        -- NULL when n = 0
    max FLOAT,
    n_nonzero BIGINT NOT NULL,
    hist INTEGER[] NOT NULL,          -- counts over warehouse/summaries.py EDGES (24 bins, powers of ten)
    kth_top FLOAT NOT NULL,           -- the value of the node's EXAMPLES_K-th highest example (-inf while
    kth_bottom FLOAT NOT NULL         -- it has fewer, or unknown: from before version 7); K-th lowest (+inf)
);

-- Candidate examples per node: a superset of its EXAMPLES_K highest ('top') and lowest ('bottom') stored
-- values in each first_token group, for the prompts the summaries cover (each flush appends the values
-- that entered the run's running K since the last one).
CREATE TABLE IF NOT EXISTS node_examples (
    run_id INTEGER NOT NULL,
    dst VARCHAR NOT NULL,
    pass_type VARCHAR NOT NULL,
    layer SMALLINT NOT NULL,
    head SMALLINT NOT NULL,
    node_type VARCHAR NOT NULL,
    node_index INTEGER NOT NULL,
    first_token BOOLEAN NOT NULL,
    side VARCHAR NOT NULL,            -- 'top' or 'bottom'
    prompt_id INTEGER NOT NULL,
    token SMALLINT NOT NULL,
    token2 SMALLINT NOT NULL,         -- the attended-to token of token-pair dsts, else -1
    value FLOAT NOT NULL
);

-- Runs whose per-node summaries are stored merged with other runs' (warehouse/summary_merge.py): finished
-- runs of one model and capture settings share one set of node_summaries and node_examples rows, stored
-- under the smallest run_id among them, `pool`. A run not listed keeps its own rows under its run_id.
CREATE TABLE IF NOT EXISTS summary_pools (
    run_id INTEGER NOT NULL,
    pool INTEGER NOT NULL
);
