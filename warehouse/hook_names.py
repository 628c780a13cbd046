"""TransformerLens hook names for the registry's locations: the one table that says which stored dst and
layer a name such as `blocks.5.hook_resid_post` reads.

`model_hooks` answers it in Python for one model (the activation cache, queries/cache.py); `tl_hooks_sql`
turns the same table into the `tl_hooks` view and the `activations_by_hook` table macro of every lake
(warehouse/db.py creates them with the other views). A hook's `_grad` name reads the backward pass.

Values are TransformerLens' own: where a location is stored in other units (queries and keys carry the
square root of the attention scaling, TransformerLens' hook_q / hook_k do not) `scale` converts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from warehouse.registry import LOCATIONS, PassType

GRAD_SUFFIX = "_grad"


@dataclass(frozen=True)
class Condition:
    """A model property a hook needs, as a test of the recorded config (Python) and of models.config (SQL),
    and in words (the README's table)."""

    test: Callable[[Mapping[str, Any]], bool]
    sql: str
    words: str


CONDITIONS: dict[str, Condition] = {
    "": Condition(lambda c: True, "true", ""),
    # TransformerLens names the rotated query and key hook_rot_q / hook_rot_k; hook_q / hook_k are the
    # unrotated ones, which actwh does not store
    "rotary": Condition(lambda c: c.get("rope") is not None, "(m.config->>'rope') IS NOT NULL", "rotary models"),
    "learned_positions": Condition(
        lambda c: c.get("rope") is None, "(m.config->>'rope') IS NULL", "models with learned positions"
    ),
    # hook_embed is the residual's start only where nothing is added to it (no learned positions, no scale)
    "embedding_only": Condition(
        lambda c: c.get("rope") is not None and float(c.get("embedding_scale", 1.0)) == 1.0,
        "(m.config->>'rope') IS NOT NULL AND coalesce((m.config->>'embedding_scale')::DOUBLE, 1) = 1",
        "rotary models without an embedding scale (elsewhere the embedding is blocks.0.hook_resid_pre)",
    ),
    # OLMo 2 reads the residual as it is (its norms follow the blocks)
    "pre_norms": Condition(
        lambda c: c.get("pre_block_norms", True),
        "coalesce((m.config->>'pre_block_norms')::BOOLEAN, true)",
        "models with norms before the blocks",
    ),
    # a parallel block has no residual between attention and MLP
    "sequential": Condition(
        lambda c: not c.get("parallel_residual", False),
        "NOT coalesce((m.config->>'parallel_residual')::BOOLEAN, false)",
        "models whose MLP follows attention",
    ),
}


@dataclass(frozen=True)
class TLHook:
    """One TransformerLens hook name pattern ('{L}' stands for the block) and the location it reads.

    Blocks run from `first_block` to the last (a name with '{L}') or are `first_block` alone (None: the
    name belongs to no block); the stored layer is the block plus `layer_shift` (locations with layers).
    """

    name: str
    location: str
    first_block: int | None = 0
    layer_shift: int = 0
    requires: str = ""
    qk: bool = False  # stored times the model's query/key scale

    @property
    def per_block(self) -> bool:
        return "{L}" in self.name


HOOKS: tuple[TLHook, ...] = (
    TLHook("hook_embed", "resid.post_emb", first_block=None, requires="embedding_only"),
    TLHook("blocks.0.hook_resid_pre", "resid.post_emb"),
    TLHook("blocks.{L}.hook_resid_pre", "resid.post_mlp", first_block=1, layer_shift=-1),
    TLHook("blocks.{L}.ln1.hook_scale", "attn_ln.scale", requires="pre_norms"),
    TLHook("blocks.{L}.attn.hook_q", "attn.q", requires="learned_positions", qk=True),
    TLHook("blocks.{L}.attn.hook_k", "attn.k", requires="learned_positions", qk=True),
    TLHook("blocks.{L}.attn.hook_rot_q", "attn.q", requires="rotary", qk=True),
    TLHook("blocks.{L}.attn.hook_rot_k", "attn.k", requires="rotary", qk=True),
    TLHook("blocks.{L}.attn.hook_v", "attn.v"),
    TLHook("blocks.{L}.attn.hook_attn_scores", "attn.qk_logits"),
    TLHook("blocks.{L}.attn.hook_pattern", "attn.qk_probs"),
    TLHook("blocks.{L}.attn.hook_z", "attn.v_out"),
    TLHook("blocks.{L}.hook_attn_out", "resid.delta_attn"),
    TLHook("blocks.{L}.hook_resid_mid", "resid.post_attn", requires="sequential"),
    TLHook("blocks.{L}.ln2.hook_scale", "mlp_ln.scale", requires="pre_norms"),
    TLHook("blocks.{L}.mlp.hook_pre", "mlp.pre_act"),
    TLHook("blocks.{L}.mlp.hook_post", "mlp.post_act"),
    TLHook("blocks.{L}.hook_mlp_out", "resid.delta_mlp"),
    TLHook("blocks.{L}.hook_resid_post", "resid.post_mlp"),
    TLHook("ln_final.hook_scale", "resid.ln_f.scale", first_block=None),
)

# TransformerLens suffixes of per-block hooks (blocks.L.<suffix>) -> the location at that layer
BLOCK_SUFFIXES: dict[str, str] = {
    h.name.removeprefix("blocks.{L}."): h.location for h in HOOKS if h.per_block and not h.layer_shift
}


@dataclass(frozen=True)
class HookRef:
    """Where a hook's values are stored: `location` at `layer` (None: no layer) in pass `pass_type`, times
    `scale` to give TransformerLens' value; `block` is the hook's block (None: none)."""

    hook: TLHook
    block: int | None
    layer: int | None
    pass_type: PassType
    scale: float

    @property
    def location(self) -> str:
        return self.hook.location

    @property
    def dst(self) -> str:
        return LOCATIONS[self.hook.location].dst


def query_key_scale(config: Mapping[str, Any], d_head: int) -> float:
    """The factor stored queries and keys carry: the square root of the attention scaling."""
    scaling = config.get("attn_scale")
    return math.sqrt(float(scaling) if scaling is not None else d_head**-0.5)


def model_hooks(config: Mapping[str, Any]) -> dict[str, HookRef]:
    """Every TransformerLens hook name a model has, forward names first, then the `_grad` ones, each in the
    order TransformerLens fires them (embedding, block by block, final norm).

    `config` is the model's recorded config with its shape (n_layers, d_head and the architecture switches).
    """
    n_layers, qk_scale = int(config["n_layers"]), query_key_scale(config, int(config["d_head"]))
    found: list[tuple[tuple[bool, int, int, int], str, HookRef]] = []
    for pass_type, suffix in ((PassType.FORWARD, ""), (PassType.BACKWARD, GRAD_SUFFIX)):
        backward = pass_type is PassType.BACKWARD
        for position, hook in enumerate(HOOKS):
            loc = LOCATIONS[hook.location]
            if not CONDITIONS[hook.requires].test(config) or (backward and not loc.has_backward):
                continue
            scale = (qk_scale if backward else 1 / qk_scale) if hook.qk else 1.0
            blocks = range(hook.first_block or 0, n_layers) if hook.per_block else [hook.first_block]
            # hooks outside the blocks come before them (the embedding) or after them (the final norm)
            group = 1 if hook.first_block is not None else (0 if position == 0 else 2)
            for block in blocks:
                layer = block + hook.layer_shift if loc.has_layers and block is not None else None
                ref = HookRef(hook, block, layer, pass_type, scale)
                found.append(
                    ((backward, group, block or 0, position), hook.name.replace("{L}", str(block)) + suffix, ref)
                )
    return {name: ref for _, name, ref in sorted(found, key=lambda item: item[0])}


def tl_hooks_sql() -> str:
    """The `tl_hooks` view (one row per model and hook name: block, dst, stored layer, pass, scale) and the
    `activations_by_hook(name)` table macro, generated from HOOKS."""
    rows = ",\n    ".join(
        f"('{h.name}', '{h.location}', '{LOCATIONS[h.location].dst}', {_sql_int(h.first_block)}, {h.layer_shift}, "
        f"{str(LOCATIONS[h.location].has_layers).lower()}, {str(LOCATIONS[h.location].has_backward).lower()}, "
        f"'{h.requires}', {str(h.qk).lower()})"
        for h in HOOKS
    )
    requires = " OR ".join(f"(h.requires = '{key}' AND {c.sql})" for key, c in CONDITIONS.items())
    qk_scale = "sqrt(coalesce((m.config->>'attn_scale')::DOUBLE, m.d_head ^ -0.5))"
    return f"""
CREATE OR REPLACE VIEW tl_hooks AS
WITH hooks(pattern, location, dst, first_block, layer_shift, has_layers, has_backward, requires, qk) AS (
    VALUES
    {rows}
),
passes(pass_type, suffix) AS (VALUES ('forward', ''), ('backward', '{GRAD_SUFFIX}')),
expanded AS (
    SELECT m.model_id, h.*, p.pass_type, p.suffix, {qk_scale} AS qk_scale,
           unnest(CASE WHEN contains(h.pattern, '{{L}}') THEN range(h.first_block, m.n_layers)
                       ELSE [h.first_block] END) AS block
    FROM models m CROSS JOIN hooks h CROSS JOIN passes p
    WHERE ({requires}) AND (p.pass_type = 'forward' OR h.has_backward)
)
SELECT model_id, replace(pattern, '{{L}}', coalesce(block::VARCHAR, '')) || suffix AS hook_name,
       block::SMALLINT AS block, location, dst,
       CASE WHEN has_layers THEN (block + layer_shift)::SMALLINT END AS layer, pass_type,
       CASE WHEN NOT qk THEN 1.0 WHEN pass_type = 'forward' THEN 1 / qk_scale ELSE qk_scale END AS scale
FROM expanded;

CREATE OR REPLACE MACRO activations_by_hook(name) AS TABLE
SELECT h.hook_name, a.prompt_id, a.token, a.token2, h.block, a.head, a.node_type, a.node_index, a.dst, a.layer,
       a.pass_type, (a.value * h.scale)::FLOAT AS value
FROM tl_hooks h
JOIN prompts p ON p.model_id = h.model_id
JOIN activations a
  ON a.prompt_id = p.prompt_id AND a.dst = h.dst AND a.layer IS NOT DISTINCT FROM h.layer AND a.pass_type = h.pass_type
WHERE h.hook_name = name
  AND (SELECT CASE WHEN count(*) = 0
                   THEN error('no TransformerLens hook ' || name || ' in this warehouse''s models'
                              || ' (names: SELECT hook_name FROM tl_hooks)')
                   ELSE true END
       FROM tl_hooks WHERE hook_name = name);
"""


def readme_table() -> str:
    """The README's table of hook names (a test holds the README to it)."""
    lines = [
        "| TransformerLens hook | location (`--locations`) | dst | layer in the warehouse | note |",
        "|---|---|---|---|---|",
    ]
    for hook in HOOKS:
        loc = LOCATIONS[hook.location]
        name = f"`{hook.name.replace('{L}', 'L')}`" + (f" (L >= {hook.first_block})" if hook.first_block else "")
        layer = "L" + (f" - {-hook.layer_shift}" if hook.layer_shift else "") if loc.has_layers else "none"
        notes = [CONDITIONS[hook.requires].words] if hook.requires else []
        if hook.qk:
            notes.append("stored times the square root of the attention scaling")
        lines.append(f"| {name} | `{hook.location}` | `{loc.dst}` | {layer} | {'; '.join(notes)} |")
    return "\n".join(lines) + "\n"


def _sql_int(value: int | None) -> str:
    return "NULL" if value is None else str(value)
