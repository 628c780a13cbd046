"""Stored prompts as a TransformerLens ActivationCache: `Warehouse.cache(prompt_ids)` gives an object with
the cache's names, shapes and analyses (queries/cache_analyses.py), its tensors rebuilt from `facts` rows.

Keys are TransformerLens hook names (warehouse/hook_names.py maps them onto the registry's locations);
each is read from the lake on first access and kept, so iterating a long prompt's cache holds only what
was asked for. The cache keeps one read-only connection (one snapshot) until `close()` or the end of a
`with` block.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, KeysView, Sequence
from typing import Any

import duckdb
import numpy as np
import torch

from queries.cache_analyses import CacheAnalyses
from queries.cache_weights import CacheConfig
from queries.stored_facts import require_facts
from queries.streaming import QueryError
from warehouse import db
from warehouse.hook_names import GRAD_SUFFIX, HookRef, model_hooks
from warehouse.registry import LOCATIONS, ModelShape, PassType

# Short names TransformerLens accepts for a hook (its get_act_name conventions)
_NAME_ALIASES = {
    "attn": "pattern",
    "attn_logits": "attn_scores",
    "key": "k",
    "query": "q",
    "value": "v",
    "mlp_pre": "pre",
    "mlp_mid": "mid",
    "mlp_post": "post",
}
_ATTN_NAMES = {"k", "v", "q", "z", "rot_k", "rot_q", "result", "pattern", "attn_scores"}
_MLP_NAMES = {"pre", "post", "mid", "pre_linear"}
_LAYER_TYPES = {"a": "attn", "m": "mlp", "b": "", "block": "", "blocks": "", "attention": "attn"}
_NORM_NAMES = {"scale", "normalized"}
# What to say of TransformerLens names actwh has no location for
_NOT_STORED = {
    r"hook_embed|hook_pos_embed": "a model with learned positions stores their sum only: blocks.0.hook_resid_pre",
    r"blocks\.\d+\.attn\.hook_[qk]": "a rotary model stores the rotated query and key (attn.hook_rot_q, hook_rot_k)",
    r".*hook_normalized": "actwh stores the norms' scales (hook_scale) and the residual they read",
}


# A cache holding at most this many values is read in one query when iterated whole (about 50 bytes a
# value while read: 400 MB); larger ones key by key.
BULK_VALUES = 8_000_000


class MissingActivation(KeyError):
    """A hook name this cache cannot give: one line saying why and what to ingest."""

    def __str__(self) -> str:
        return str(self.args[0])


def act_name(name: str, layer: int | None = None, layer_type: str | None = None) -> str:
    """The full hook name of a TransformerLens short name: ('pattern', 5) -> 'blocks.5.attn.hook_pattern',
    'k6' -> 'blocks.6.attn.hook_k', 'scale4ln1' -> 'blocks.4.ln1.hook_scale', 'scale' -> 'ln_final.hook_scale'."""
    if ("." in name or name.startswith("hook_")) and layer is None and layer_type is None:
        return name
    if match := re.fullmatch(r"([a-z_]+?)(\d+)([a-z]?.*)", name):
        name, layer, layer_type = match.group(1), int(match.group(2)), match.group(3) or None
    name = _NAME_ALIASES.get(name, name)
    if name in _ATTN_NAMES:
        layer_type = "attn"
    elif name in _MLP_NAMES:
        layer_type = "mlp"
    elif layer_type in _LAYER_TYPES:
        layer_type = _LAYER_TYPES[layer_type]
    full = (f"blocks.{layer}." if layer is not None else "") + (f"{layer_type}." if layer_type else "") + f"hook_{name}"
    return f"ln_final.{full}" if name in _NORM_NAMES and layer is None else full


class StoredCache(CacheAnalyses):
    """A read-only TransformerLens ActivationCache over stored prompts (see `CacheQueries.cache`).

    Tensors are float32 on `device`, with TransformerLens' shapes: [batch, pos, d_model] for residual
    vectors, [batch, pos, head, d_head] for q/k/v/z (k and v over the key/value heads), [batch, head,
    query_pos, key_pos] for attn_scores (-inf above the diagonal) and pattern (0 there), [batch, pos, 1]
    for norm scales, [batch, pos, d_mlp] for MLP activations; `name + '_grad'` holds the gradient of the
    run's backward objective.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, prompt_ids: list[int], run_id: int | None, device: str) -> None:
        self._con = con
        self.prompt_ids = prompt_ids
        self.device = torch.device(device)
        self.has_batch_dim = True
        self.cache_dict: dict[str, torch.Tensor] = {}
        self._load_prompts(run_id)
        self._refs = self._stored_hooks()
        self.has_embed = "hook_embed" in self._refs
        self.has_pos_embed = False  # positions are stored summed with the embedding (see _NOT_STORED)

    # -- construction ----------------------------------------------------------------------------------

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._con.execute(sql, list(params)).fetchall()
        except duckdb.Error as exc:
            raise QueryError(f"query failed: {str(exc).splitlines()[0]}") from exc

    def _load_prompts(self, run_id: int | None) -> None:
        marks = ", ".join("?" * len(self.prompt_ids))
        rows = self._rows(
            f"SELECT prompt_id, run_id, model_id, n_tokens, target_id, distractor_id, objective FROM prompts"
            f" WHERE prompt_id IN ({marks})",
            self.prompt_ids,
        )
        found = {r[0]: r for r in rows}
        if missing := [p for p in self.prompt_ids if p not in found]:
            raise db.WarehouseError(f"no prompt with id {missing[0]} in this warehouse (committed prompts: prompts())")
        require_facts(self._con, self.prompt_ids)
        rows = [found[p] for p in self.prompt_ids]
        if run_id is not None and (other := [r[0] for r in rows if r[1] != run_id]):
            raise db.WarehouseError(f"prompt {other[0]} is not in run {run_id}")
        if len({r[2] for r in rows}) > 1:
            raise db.WarehouseError("the prompts come from different models: a cache holds one model's prompts")
        if len(lengths := {r[3] for r in rows}) > 1:
            raise db.WarehouseError(
                f"the prompts have different lengths ({sorted(lengths)} tokens): a batched cache needs one length "
                "(TransformerLens would pad them; actwh stores no activations at padding)"
            )
        self.n_tokens = rows[0][3]
        self.target_ids = [r[4] for r in rows]
        self.distractor_ids = [r[5] for r in rows]
        self._backward = all(r[6] is not None for r in rows)
        self._run_ids = sorted({r[1] for r in rows})
        self.model_id = rows[0][2]
        (shape,) = self._rows(
            "SELECT n_layers, d_model, n_heads, n_kv_heads, d_head, d_mlp, vocab_size, n_ctx, norm, config FROM models"
            " WHERE model_id = ?",
            [self.model_id],
        )
        self.model_shape = ModelShape(*shape[:8])
        config = {**json.loads(shape[9] or "{}"), "n_layers": shape[0], "d_head": shape[4]}
        self.model_config = config
        self.cfg = CacheConfig(
            n_layers=shape[0],
            d_model=shape[1],
            n_heads=shape[2],
            n_kv_heads=shape[3],
            d_head=shape[4],
            d_mlp=shape[5],
            d_vocab=shape[6],
            normalization_type="LN" if shape[8] == "layernorm" else "RMS",
            eps=float(config.get("norm_eps", 1e-5)),
        )
        tokens = self._rows(
            f"SELECT prompt_id, token, token_id FROM tokens WHERE prompt_id IN ({marks})", self.prompt_ids
        )
        ids = np.zeros((len(self.prompt_ids), self.n_tokens), dtype=np.int64)
        row_of = {p: i for i, p in enumerate(self.prompt_ids)}
        for prompt_id, pos, token_id in tokens:
            ids[row_of[prompt_id], pos] = token_id
        self.tokens = torch.from_numpy(ids)

    def _stored_hooks(self) -> dict[str, HookRef]:
        """The model's hooks whose location, pass and layer every prompt's run stored."""
        marks = ", ".join("?" * len(self._run_ids))
        runs = self._rows(f"SELECT locations, layers FROM runs WHERE run_id IN ({marks})", self._run_ids)
        stored = set.intersection(*(set(r[0]) for r in runs))
        self._run_layers = [set(r[1]) if r[1] is not None else None for r in runs]
        return {
            name: ref
            for name, ref in model_hooks(self.model_config).items()
            if f"{ref.location}:{ref.pass_type.value}" in stored
            and (ref.pass_type is PassType.FORWARD or (self._backward and not self._held_constant(ref)))
            and all(ref.layer is None or layers is None or ref.layer in layers for layers in self._run_layers)
        }

    def _held_constant(self, ref: HookRef) -> bool:
        """The logit-difference objective (a target per prompt) holds the final norm's scale constant, so
        that scale has no gradient."""
        return ref.location == "resid.ln_f.scale" and all(t is not None for t in self.target_ids)

    # -- the dict interface ----------------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"StoredCache of prompts {self.prompt_ids} with keys {list(self._refs)}"

    def __getitem__(self, key: str | tuple[Any, ...]) -> torch.Tensor:
        name = self._resolve(key)
        if name not in self.cache_dict:
            self.cache_dict[name] = self._load(name)
        return self.cache_dict[name]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and (key in self._refs or key in self.cache_dict)

    def __len__(self) -> int:
        return len(self._refs)

    def __iter__(self) -> Iterator[str]:
        return iter(self._refs)

    def keys(self) -> KeysView[str]:
        """Every hook name stored for these prompts (each loaded only when read)."""
        return self._refs.keys()

    def values(self) -> Iterator[torch.Tensor]:
        """The tensors in key order. A cache of at most BULK_VALUES values is read whole in one query
        first; a larger one key by key as the iteration reaches each, so memory holds what was read."""
        if self._n_values() <= BULK_VALUES:
            self._load_all()
        return (self[name] for name in self._refs)

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, tensor) in key order, read as `values()` reads them."""
        return zip(self._refs, self.values(), strict=True)

    def _n_values(self) -> int:
        """How many values the keys hold (attention pairs counted as a full square)."""
        return sum(
            len(self.prompt_ids)
            * int(np.prod([self.model_shape.size(d, self.n_tokens) for d in LOCATIONS[r.location].shape]))
            for r in self._refs.values()
        )

    def to(self, device: str | torch.device) -> StoredCache:
        """Move the loaded tensors, and those loaded later, to `device`; returns the cache."""
        self.device = torch.device(device)
        self.cache_dict = {k: v.to(self.device) for k, v in self.cache_dict.items()}
        self._weights = {k: v.to(self.device) for k, v in getattr(self, "_weights", {}).items()}
        self.__dict__.pop("_unembed", None)  # rebuilt on the new device when next read
        return self

    def remove_batch_dim(self) -> StoredCache:
        """Drop the batch axis of every tensor (a cache of one prompt), as TransformerLens does."""
        if self.has_batch_dim:
            if len(self.prompt_ids) != 1:
                raise ValueError(f"cannot remove the batch dimension of a cache of {len(self.prompt_ids)} prompts")
            self.cache_dict = {k: v[0] for k, v in self.cache_dict.items()}
            self.has_batch_dim = False
        return self

    def close(self) -> None:
        """Close the cache's connection; tensors already loaded stay readable."""
        self._con.close()

    def __enter__(self) -> StoredCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- loading ---------------------------------------------------------------------------------------

    def _resolve(self, key: str | tuple[Any, ...]) -> str:
        if isinstance(key, str):
            return key if key in self._refs or key in self.cache_dict else act_name(key)
        name, layer, *rest = (*key, None) if len(key) == 1 else key
        if layer is not None and layer < 0:
            layer += self.cfg.n_layers
        return act_name(name, layer, rest[0] if rest else None)

    def _load(self, name: str) -> torch.Tensor:
        if name in self._refs:
            return self._read(name, self._refs[name])
        if match := re.fullmatch(r"blocks\.(\d+)\.attn\.hook_result", name):
            return self._head_results(int(match.group(1)))
        raise MissingActivation(self._why_missing(name))

    def _why_missing(self, name: str) -> str:
        every = model_hooks(self.model_config)
        if ref := every.get(name):
            pass_name = f"{ref.location}:{ref.pass_type.value}"
            if ref.pass_type is PassType.BACKWARD and not self._backward:
                return f"{name} is not stored: these prompts were ingested without a backward pass"
            if ref.pass_type is PassType.BACKWARD and self._held_constant(ref):
                return f"{name} does not exist: the logit-difference objective holds the final norm's scale constant"
            layers = "" if ref.layer is None else f" and --layers including {ref.layer}"
            return f"{name} is not stored for these prompts: ingest with --locations {pass_name}{layers}"
        base = name.removesuffix(GRAD_SUFFIX)
        for pattern, why in _NOT_STORED.items():
            if re.fullmatch(pattern, base):
                return f"{name} is not a hook actwh stores: {why}"
        return f"{name} is not a TransformerLens hook of this model that actwh stores (see keys() or tl_hooks)"

    def _read(self, name: str, ref: HookRef) -> torch.Tensor:
        """Read one hook's rows (its dst and layer only) and rebuild its tensor."""
        return self._build(name, ref, self._fetch([ref]))

    def _load_all(self) -> None:
        """Read every key's rows in one query (both passes of a row at once) and rebuild each tensor."""
        wanted = {n: r for n, r in self._refs.items() if n not in self.cache_dict}
        if not wanted:
            return
        groups = list(dict.fromkeys((r.dst, r.layer) for r in wanted.values()))
        rows = self._fetch(list(wanted.values()), groups)
        order = np.argsort(rows["grp"], kind="stable")
        bounds = np.searchsorted(rows["grp"][order], np.arange(len(groups) + 1))
        for name, ref in wanted.items():
            i = groups.index((ref.dst, ref.layer))
            part = order[bounds[i] : bounds[i + 1]]
            self.cache_dict[name] = self._build(name, ref, {k: v[part] for k, v in rows.items()})

    def _fetch(self, refs: list[HookRef], groups: list[tuple[str, int | None]] | None = None) -> dict[str, np.ndarray]:
        """The rows of these prompts for the refs' dsts (and layer, for one ref), as numpy columns; `group`
        `grp` numbers each row's (dst, layer) in `groups`' order (0 for one ref; -1 for rows of
        a layer not asked for)."""
        marks = ", ".join("?" * len(self.prompt_ids))
        if groups is None:
            ref = refs[0]
            where, params = ("dst = ? AND layer IS NULL", [ref.dst]) if ref.layer is None else (
                "dst = ? AND layer = ?", [ref.dst, ref.layer])  # fmt: skip
            group = "0"
        else:
            dsts = sorted({dst for dst, _ in groups})
            where, params = f"dst IN ({', '.join('?' * len(dsts))})", dsts
            cases = " ".join(
                f"WHEN dst = ? AND layer {'IS NULL' if layer is None else '= ?'} THEN {i}"
                for i, (_, layer) in enumerate(groups)
            )
            params = [*(v for dst, layer in groups for v in (dst, *([] if layer is None else [layer]))), *params]
            group = f"CASE {cases} ELSE -1 END"
        rows = self._con.execute(
            f"SELECT {group} AS grp, prompt_id, token, coalesce(token2, -1) AS token2, coalesce(head, -1) AS head,"
            " node_index, coalesce(forward, 'NaN'::FLOAT) AS forward, forward IS NOT NULL AS has_forward,"
            " coalesce(backward, 'NaN'::FLOAT) AS backward, backward IS NOT NULL AS has_backward"
            f" FROM facts WHERE {where} AND prompt_id IN ({marks})",
            [*params, *self.prompt_ids],
        ).fetchnumpy()
        return {k: np.asarray(v) for k, v in rows.items()}

    def _build(self, name: str, ref: HookRef, rows: dict[str, np.ndarray]) -> torch.Tensor:
        """One hook's tensor, in TransformerLens' layout, from its dst and layer's rows."""
        loc = LOCATIONS[ref.location]
        column = ref.pass_type.value
        present = rows[f"has_{column}"]
        rows = {k: v[present] for k, v in rows.items()}
        shape = [len(self.prompt_ids), *(self.model_shape.size(d, self.n_tokens) for d in loc.shape)]
        n_rows = len(rows[column])
        if n_rows == 0:
            raise MissingActivation(
                f"{name} has no rows for these prompts: ingest them with --locations {ref.location}:{column}"
            )
        dense = loc.n_token_axes == 1
        if dense and n_rows != int(np.prod(shape)):
            raise MissingActivation(f"{name}: {n_rows} of {int(np.prod(shape))} values are stored")
        order = np.argsort(self.prompt_ids)
        index = [order[np.searchsorted(np.asarray(self.prompt_ids)[order], rows["prompt_id"])]]
        token_columns = iter(("token", "token2"))
        for axis, dim in enumerate(loc.shape):
            if dim.is_token:
                column_name = next(token_columns)
            elif axis == len(loc.shape) - 1:
                column_name = "node_index"
            else:
                column_name = "head"
            index.append(rows[column_name].astype(np.int64))
        # masked attention scores are -inf in TransformerLens, masked probabilities and gradients 0
        fill = -np.inf if ref.location == "attn.qk_logits" and ref.pass_type is PassType.FORWARD else 0.0
        values = np.full(shape, fill, dtype=np.float32)
        values[tuple(index)] = rows[column].astype(np.float32) * np.float32(ref.scale)
        tensor = torch.from_numpy(values)
        if not dense:  # [batch, query, key, head] -> [batch, head, query, key]
            tensor = tensor.permute(0, 3, 1, 2).contiguous()
        tensor = tensor.to(self.device)
        return tensor if self.has_batch_dim else tensor[0]


def open_cache(
    con: duckdb.DuckDBPyConnection, prompt_ids: int | Sequence[int], run_id: int | None, device: str
) -> StoredCache:
    """Warehouse.cache: a StoredCache owning `con` (closed here if the prompts cannot make one)."""
    try:
        ids = [int(prompt_ids)] if isinstance(prompt_ids, int | np.integer) else [int(p) for p in prompt_ids]
        if not ids:
            raise db.WarehouseError("cache() needs at least one prompt id")
        return StoredCache(con, ids, run_id, device)
    except BaseException:
        con.close()
        raise
