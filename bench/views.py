"""Benchmark: top 20 nodes by each Tier-1 dst across all prompts, through the SQL views against torch.

    python -m bench.views --prompts 1000
    python -m bench.views --prompts 4 --repeat 1 --model gpt2-tiny --db /tmp/v   # a smoke run

1. Generates N deterministic prompts of exactly 20 SmolLM2 tokens, each with a capital-city target and
   distractor, and ingests them with the default model and locations (a rerun finds them stored).
2. Times `SELECT ... FROM <view> ORDER BY value DESC LIMIT 20` for each of the twelve Tier-1 dsts on a
   read-only connection: one warm-up run, then the best of --repeat.
3. Re-runs the model over the same prompts, keeps the captured tensors in memory as stacked float32, and
   times computing each dst's full tensor and its top 20 in torch (best of --repeat). The capture time is
   reported but is not part of the ratio.
4. Checks the two top-20 lists agree and prints (and with --markdown writes) the table.

The torch phase runs first and frees its tensors before the SQL phase, so the two never share memory.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import random
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # `python bench/views.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import duckdb
import torch

from ingest.capture import CaptureSpec, Recorder
from ingest.checkpoints import DEFAULT_MODEL, LoadedModel, load_model
from ingest.objective import per_prompt_objective
from ingest.prompts import PromptInput
from ingest.worker import IngestOptions, ingest
from queries.api import Warehouse
from warehouse import db
from warehouse.registry import PassType

N_TOKENS = 20
TOP = 20
SECTION = "Derived views: top 20 per Tier-1 dst over"

# Country -> its capital, each capital a single SmolLM2 token with its leading space.
CAPITALS = {
    "France": " Paris",
    "England": " London",
    "Germany": " Berlin",
    "Italy": " Rome",
    "Spain": " Madrid",
    "Austria": " Vienna",
}
_WORDS_TEXT = (
    "the a of and to in is was it for on with as his they at be this from have or by one had not but what all "
    "were when we there can an your which their said if do will each about how up out them then she many some "
    "so these would other into has more her two like him see time could no make than first been its who now "
    "people my made over did down only way find use may water long little very after words called just where "
    "most know get through back much before go good new write our used me man too any day same right look think "
    "also around another came come work three word must because does part even place well such here take why "
    "things help put years different away again off went old number great tell men say small every found still "
    "between name should home big give air line set own under read last never us left end along while might "
    "next sound below saw something thought both few those always looked show large often together asked house "
    "world going want school important until form food keep children feet land side without boy once animals "
    "life enough took sometimes four head above kind began almost live page got earth need far hand high year "
    "mother light parts country father let night following picture being study second eyes soon times story "
    "boys since white days ever paper hard near sentence better best across during today others however sure "
    "means knew try told young miles sun ways thing whole hear example heard several change answer room sea "
    "against top turned learn point city play toward five using himself usually"
)
WORDS = tuple(_WORDS_TEXT.split())

# The Tier-1 dsts: a view each, except the raw ones (RAW), read from activations.
TIER1: list[str] = [
    "mlp_post_act",
    "mlp_write_norm",
    "mlp_write_to_final_residual_grad",
    "mlp_act_times_grad",
    "attn_qk_probs",
    "unflattened_attn_write_norm",
    "unflattened_attn_write_to_final_residual_grad",
    "unflattened_attn_act_times_grad",
    "always_one",
    "resid_post_embedding_norm",
    "resid_post_embedding_proj_to_final_residual_grad",
    "token_attribution",
]
RAW = {"mlp_post_act", "attn_qk_probs"}
# Values must agree to 1e-5 of the largest. The torch side re-runs the model in the same batches as the
# ingest, and the capture is batch invariant, so the stored passes themselves agree bit for bit.
TOLERANCE = 1e-5
Key = tuple[int | None, ...]  # (prompt_id, token, token2, layer, head, node_index)


def make_prompts(loaded: LoadedModel, n: int, seed: int = 0) -> list[PromptInput]:
    """n distinct prompts of exactly N_TOKENS tokens: random filler words, then "The capital of X is"."""
    tok = loaded.tokenizer
    rng = random.Random(seed)
    countries = sorted(CAPITALS)
    seen: set[str] = set()
    prompts: list[PromptInput] = []
    while len(prompts) < n:
        country = rng.choice(countries)
        suffix = f" The capital of {country} is"
        words: list[str] = []
        while True:
            words.append(rng.choice(WORDS))
            text = " ".join(words).capitalize() + "." + suffix
            length = len(tok.encode_ordinary(text))
            if length >= N_TOKENS:
                break
        if length != N_TOKENS or text in seen:
            continue
        seen.add(text)
        distractor = rng.choice([c for c in countries if c != country])
        prompts.append(PromptInput(text, CAPITALS[country], CAPITALS[distractor], len(prompts) + 1))
    return prompts


def folder_size(path: Path) -> int:
    """Bytes of every file under a warehouse folder (catalog and Parquet data)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run_ingest(path: Path, prompts: list[PromptInput], batch_size: int, model: str = DEFAULT_MODEL) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    options = IngestOptions(model=model, batch_size=batch_size, progress=True)
    report = ingest(path, prompts, options)
    if report.skipped:
        raise SystemExit(f"ingest skipped {len(report.skipped)} prompts, e.g. {report.skipped[0].describe()}")
    with db.connect(path, read_only=True) as con:
        rows = con.execute("SELECT count(*) FROM facts").fetchall()[0][0]
    print(
        f"ingest: {report.stored} prompts stored in {report.seconds:.1f} s ({report.tokens:,} tokens, "
        f"{report.tokens / report.seconds:.1f} tokens/s; {report.rows:,} fact rows, {report.write_seconds:.1f} s "
        f"writing), {report.already_stored} already stored; the lake holds {rows:,} fact rows, "
        f"{folder_size(path) / 2**30:.2f} GiB"
    )


# ---------------------------------------------------------------------------------------------- torch


@dataclass
class Captured:
    """The captured tensors of every prompt, stacked: (prompt, layer, ...) float32."""

    prompt_ids: torch.Tensor  # (N,) warehouse prompt ids, in prompt order
    pair_index: torch.Tensor  # (N,) index into pairs
    pairs: list[tuple[int, int]]  # (target id, distractor id)
    a: torch.Tensor  # mlp.post_act (N, L, T, M)
    da: torch.Tensor
    p: torch.Tensor  # attn.qk_probs (N, L, Tq, Tk, H)
    dp: torch.Tensor
    v: torch.Tensor  # attn.v (N, L, T, KV, C)
    v_write_norm: torch.Tensor  # attn.v_write_norm (N, L, T, H)
    e: torch.Tensor  # resid.post_emb (N, T, D)
    de: torch.Tensor
    final_scale: torch.Tensor  # resid.ln_f.scale at the last token (N,)
    seconds: float = 0.0
    nbytes: int = field(default=0)


CAPTURE = CaptureSpec(
    {
        "resid.post_emb": (PassType.FORWARD, PassType.BACKWARD),
        "mlp.post_act": (PassType.FORWARD, PassType.BACKWARD),
        "attn.qk_probs": (PassType.FORWARD, PassType.BACKWARD),
        "attn.v": (PassType.FORWARD,),
        "attn.v_write_norm": (PassType.FORWARD,),
        "resid.ln_f.scale": (PassType.FORWARD,),
    }
)


def capture(loaded: LoadedModel, prompts: list[PromptInput], prompt_ids: list[int], batch_size: int) -> Captured:
    start = time.perf_counter()
    model, tok, cfg = loaded.model, loaded.tokenizer, loaded.model.config
    n, nl, t = len(prompts), cfg.n_layers, N_TOKENS
    ids = torch.tensor([tok.encode_ordinary(p.text) for p in prompts])
    targets = [tok.encode_ordinary(p.target or "")[0] for p in prompts]
    distractors = [tok.encode_ordinary(p.distractor or "")[0] for p in prompts]
    pairs = sorted(set(zip(targets, distractors, strict=True)))
    pair_index = torch.tensor([pairs.index(pd) for pd in zip(targets, distractors, strict=True)])

    def empty(*shape: int) -> torch.Tensor:
        return torch.empty((n, *shape), dtype=torch.float32)

    c = Captured(
        prompt_ids=torch.tensor(prompt_ids),
        pair_index=pair_index,
        pairs=pairs,
        a=empty(nl, t, cfg.d_mlp),
        da=empty(nl, t, cfg.d_mlp),
        p=empty(nl, t, t, cfg.n_heads),
        dp=empty(nl, t, t, cfg.n_heads),
        v=empty(nl, t, cfg.n_kv_heads, cfg.d_head),
        v_write_norm=empty(nl, t, cfg.n_heads),
        e=empty(t, cfg.d_model),
        de=empty(t, cfg.d_model),
        final_scale=empty(),
    )
    for lo in range(0, n, batch_size):
        hi = min(lo + batch_size, n)
        x = ids[lo:hi]
        lengths = torch.full((hi - lo,), t)
        rec = Recorder(CAPTURE, backward=True)
        logits = model.forward(x, lengths, rec, hold_final_scale=True)
        per_prompt_objective(logits, x, lengths, targets[lo:hi], distractors[lo:hi]).sum().backward()
        fwd, grad = rec.forward, rec.gradients()
        for layer in range(nl):
            c.a[lo:hi, layer] = fwd[("mlp.post_act", layer)]
            c.da[lo:hi, layer] = grad[("mlp.post_act", layer)]
            c.p[lo:hi, layer] = fwd[("attn.qk_probs", layer)]
            c.dp[lo:hi, layer] = grad[("attn.qk_probs", layer)]
            c.v[lo:hi, layer] = fwd[("attn.v", layer)]
            c.v_write_norm[lo:hi, layer] = fwd[("attn.v_write_norm", layer)]
        c.e[lo:hi] = fwd[("resid.post_emb", None)]
        c.de[lo:hi] = grad[("resid.post_emb", None)]
        c.final_scale[lo:hi] = fwd[("resid.ln_f.scale", None)][:, -1, 0]
        del rec, logits, fwd, grad
    c.seconds = time.perf_counter() - start
    c.nbytes = sum(x.numel() * x.element_size() for x in vars(c).values() if isinstance(x, torch.Tensor))
    return c


def unembed_directions(loaded: LoadedModel, pairs: list[tuple[int, int]]) -> torch.Tensor:
    """u = P(gain_f * (W_U[:, target] - W_U[:, distractor])) per pair: (pairs, D)."""
    model = loaded.model
    w_u = model.w("unembedding")
    targets = torch.tensor([t for t, _ in pairs])
    distractors = torch.tensor([d for _, d in pairs])
    u = model.w("layer_norm_gain.final")[None, :] * (w_u[:, targets] - w_u[:, distractors]).T
    if model.config.norm == "layernorm":
        u = u - u.mean(-1, keepdim=True)
    return u


def torch_dsts(loaded: LoadedModel, c: Captured) -> dict[str, Callable[[], tuple[torch.Tensor, Callable]]]:
    """Per dst: a function computing the full tensor (masked where the warehouse stores no row), returning
    it with a function that maps a flat index of it to the warehouse key."""
    model, cfg = loaded.model, loaded.model.config
    n, nl, t = c.a.shape[0], cfg.n_layers, N_TOKENS
    last = t - 1
    group = cfg.n_heads // cfg.n_kv_heads
    causal = torch.ones(t, t, dtype=torch.bool).tril()[:, :, None]  # (q, k, 1)
    w_out = torch.stack([model.w("mlp.to_residual", layer) for layer in range(nl)])  # (L, M, D)
    w_o = torch.stack([model.w("attn.to_residual", layer) for layer in range(nl)])  # (L, H, C, D)
    pid = c.prompt_ids.tolist()

    def mlp_key(shape: tuple[int, ...]) -> Callable[[int], Key]:
        def key(i: int) -> Key:
            p, layer, tok, m = unravel(i, shape)
            return (pid[p], tok, None, layer, None, m)

        return key

    def attn_key(shape: tuple[int, ...]) -> Callable[[int], Key]:
        def key(i: int) -> Key:
            p, layer, q, k, h = unravel(i, shape)
            return (pid[p], q, k, layer, None, h)

        return key

    def token_key(i: int) -> Key:
        p, tok = unravel(i, (n, t))
        return (pid[p], tok, None, None, None, 0)

    def mlp_post_act():  # noqa: ANN202
        return c.a, mlp_key(tuple(c.a.shape))

    def mlp_write_norm():  # noqa: ANN202
        return c.a * w_out.norm(dim=-1)[None, :, None, :], mlp_key(tuple(c.a.shape))

    def mlp_write_to_final_residual_grad():  # noqa: ANN202
        factors = torch.einsum("lmd,pd->plm", w_out, unembed_directions(loaded, c.pairs))  # weight-only
        values = c.a[:, :, last, :] * factors[c.pair_index] / c.final_scale[:, None, None]

        def key(i: int) -> Key:
            p, layer, m = unravel(i, tuple(values.shape))
            return (pid[p], last, None, layer, None, m)

        return values, key

    def mlp_act_times_grad():  # noqa: ANN202
        return c.a * c.da, mlp_key(tuple(c.a.shape))

    def attn_qk_probs():  # noqa: ANN202
        return c.p.masked_fill(~causal, -math.inf), attn_key(tuple(c.p.shape))

    def unflattened_attn_write_norm():  # noqa: ANN202
        values = c.p * c.v_write_norm[:, :, None, :, :]  # p[q, k, h] * ||v[k, kv(h)] W_O[h]||
        return values.masked_fill(~causal, -math.inf), attn_key(tuple(c.p.shape))

    def unflattened_attn_write_to_final_residual_grad():  # noqa: ANN202
        factors = torch.einsum("lhcd,pd->plhc", w_o, unembed_directions(loaded, c.pairs))  # weight-only
        per_prompt = factors[c.pair_index].reshape(n, nl, cfg.n_kv_heads, group, cfg.d_head)
        value_dot = torch.einsum("nlkjc,nljgc->nlkjg", c.v, per_prompt).reshape(n, nl, t, cfg.n_heads)
        values = c.p[:, :, last] * value_dot / c.final_scale[:, None, None, None]  # (N, L, k, H)

        def key(i: int) -> Key:
            p, layer, k, h = unravel(i, tuple(values.shape))
            return (pid[p], last, k, layer, None, h)

        return values, key

    def unflattened_attn_act_times_grad():  # noqa: ANN202
        return (c.p * c.dp).masked_fill(~causal, -math.inf), attn_key(tuple(c.p.shape))

    def always_one():  # noqa: ANN202
        return torch.ones(n, t), token_key

    def resid_post_embedding_norm():  # noqa: ANN202
        return c.e.norm(dim=-1), token_key

    def resid_post_embedding_proj_to_final_residual_grad():  # noqa: ANN202
        g = unembed_directions(loaded, c.pairs)[c.pair_index] / c.final_scale[:, None]
        return (c.e[:, last] * g).sum(-1), lambda i: (pid[i], last, None, None, None, 0)

    def token_attribution():  # noqa: ANN202
        return (c.e * c.de).sum(-1), token_key

    return {name: fn for name, fn in locals().items() if name in TIER1}


def unravel(index: int, shape: tuple[int, ...]) -> list[int]:
    out = []
    for size in reversed(shape):
        out.append(index % size)
        index //= size
    return out[::-1]


def topk(flat: torch.Tensor, k: int, row: int = 1 << 15) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.topk of a large 1-D tensor in two stages (per row of `row` values, in parallel, then over the
    candidates): 4-7x faster on the CPU than one topk over the whole tensor, which runs on one thread."""
    k = min(k, flat.numel())
    n_rows = flat.numel() // row
    if n_rows < 2:
        return torch.topk(flat, k)
    body = flat[: n_rows * row].view(n_rows, row).topk(k, dim=1)
    starts = torch.arange(n_rows)[:, None] * row
    values, indices = body.values.reshape(-1), (body.indices + starts).reshape(-1)
    tail = flat[n_rows * row :]
    if tail.numel():
        tail_top = torch.topk(tail, min(k, tail.numel()))
        values = torch.cat([values, tail_top.values])
        indices = torch.cat([indices, tail_top.indices + n_rows * row])
    best = torch.topk(values, k)
    return best.values, indices[best.indices]


def torch_top(fn: Callable[[], tuple[torch.Tensor, Callable]]) -> list[tuple[float, Key]]:
    values, key = fn()
    top_values, top_indices = topk(values.reshape(-1), TOP)
    return [(float(v), key(int(i))) for v, i in zip(top_values, top_indices, strict=True)]


# ---------------------------------------------------------------------------------------------- SQL


def sql_for(dst: str) -> str:
    columns = "prompt_id, token, token2, layer, head, node_index, value"
    source = f"activations WHERE dst = '{dst}' AND pass_type = 'forward'" if dst in RAW else dst
    return f"SELECT {columns} FROM {source} ORDER BY value DESC LIMIT {TOP}"


def sql_top(con: duckdb.DuckDBPyConnection, dst: str) -> list[tuple[float, Key]]:
    return [(float(r[-1]), tuple(r[:-1])) for r in con.execute(sql_for(dst)).fetchall()]


def timed(fn: Callable[[], list[tuple[float, Key]]], repeat: int, slow_s: float) -> tuple[float, int, list]:
    """One warm-up run, then the best of `repeat` (of 1 when the warm-up took longer than slow_s)."""
    start = time.perf_counter()
    result = fn()
    warm = time.perf_counter() - start
    runs = repeat if warm < slow_s else 1
    best = math.inf
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, runs, result


def node_table_seconds(path: Path, prompt_id: int, repeat: int) -> tuple[float, float]:
    """One prompt's node table (top and bottom 10 by act_times_grad, four columns): the best of `repeat`
    calls of Warehouse.top_nodes after a warm-up (each opens and closes its own read-only connection, as
    the API does), and `actwh top --prompt-id` as a command, process start to exit."""
    warehouse = Warehouse(path)
    best, _, _ = timed(lambda: warehouse.top_nodes(prompt_id).to_pylist(), repeat, math.inf)
    cli = [sys.executable, str(Path(__file__).resolve().parent.parent / "cli.py"), "top", "--db", str(path)]
    start = time.perf_counter()
    subprocess.run([*cli, "--prompt-id", str(prompt_id)], check=True, capture_output=True)
    return best, time.perf_counter() - start


# ---------------------------------------------------------------------------------------------- compare


@dataclass
class Row:
    dst: str
    sql_s: float
    torch_s: float
    sql_runs: int
    agree: bool
    same_nodes: int
    ties: int
    worst_rel: float

    @property
    def ratio(self) -> float:
        return self.sql_s / self.torch_s if self.torch_s > 0 else math.inf


def compare(
    sql: list[tuple[float, Key]], ref: list[tuple[float, Key]], tolerance: float
) -> tuple[bool, int, int, float]:
    """Values equal to `tolerance` relative (of the largest |value| in the list); how many nodes coincide; how
    many values are tied with another in the list or with the 20th (where either side may pick any)."""
    if len(sql) != len(ref):
        return False, 0, 0, math.inf
    scale = max(abs(v) for v, _ in ref) or 1.0
    worst = max(abs(a - b) for (a, _), (b, _) in zip(sql, ref, strict=True)) / scale
    same = len({k for _, k in sql} & {k for _, k in ref})
    values = [v for v, _ in ref]
    ties = sum(
        1 for i, v in enumerate(values) if any(abs(v - w) <= 1e-6 * scale for j, w in enumerate(values) if j != i)
    )
    return worst <= tolerance, same, ties, worst


# ---------------------------------------------------------------------------------------------- report


def table(rows: list[Row], n_prompts: int) -> str:
    lines = [
        "| dst | SQL s | torch s | SQL / torch | top-20 values agree | same nodes | tied values |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        note = "" if r.sql_runs > 1 else " (1 run)"
        lines.append(
            f"| {r.dst} | {r.sql_s:.3f}{note} | {r.torch_s:.3f} | {r.ratio:.1f} | "
            f"{'yes' if r.agree else 'NO'} ({r.worst_rel:.1e}) | {r.same_nodes}/{TOP} | {r.ties} |"
        )
    sql_total = sum(r.sql_s for r in rows)
    torch_total = sum(r.torch_s for r in rows)
    lines.append(
        f"| **total** | **{sql_total:.2f}** | **{torch_total:.2f}** | **{sql_total / torch_total:.1f}** | "
        f"{sum(r.agree for r in rows)}/{len(rows)} | | |"
    )
    return "\n".join(lines)


def write_markdown(path: Path, body: str, n_prompts: int) -> None:
    """Add or replace this benchmark's section, leaving every other section as it is (re-read just before)."""
    heading = f"## {SECTION} {n_prompts} prompts"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^## {re.escape(SECTION)} {n_prompts} prompts\n.*?(?=^## |\Z)", re.S | re.M)
    section = f"{heading}\n\n{body.strip()}\n\n"
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text.rstrip("\n") + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.views", description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=1000, help="number of 20-token prompts (default 1000)")
    parser.add_argument("--db", type=Path, help="warehouse folder (default out/bench_views_<N>)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs after the warm-up; the best counts")
    parser.add_argument("--slow-s", type=float, default=60.0, help="time once only when the warm-up is slower")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--memory-limit", default="8GB", help="DuckDB memory_limit for the query phase")
    parser.add_argument("--ingest-only", action="store_true", help="ingest the prompts and stop")
    parser.add_argument("--markdown", type=Path, help="add or replace this benchmark's section in this file")
    parser.add_argument("--only", nargs="*", help="just these dsts")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="gpt2-tiny for a smoke run (the figures are SmolLM2's)")
    args = parser.parse_args(argv)
    command = "python -m bench.views " + shlex.join(sys.argv[1:] if argv is None else argv)
    path: Path = args.db or Path("out") / f"bench_views_{args.prompts}"
    dsts = [d for d in TIER1 if not args.only or d in args.only]
    torch.set_num_threads(os.cpu_count() or 1)

    loaded = load_model(args.model)
    prompts = make_prompts(loaded, args.prompts, args.seed)
    print(f"{len(prompts)} prompts of {N_TOKENS} tokens; warehouse {path}")
    run_ingest(path, prompts, args.batch_size, args.model)
    if args.ingest_only:
        return 0

    with db.connect(path, read_only=True) as con:
        by_text = dict(con.execute("SELECT text, prompt_id FROM prompts").fetchall())
        n_stored = con.execute("SELECT count(*) FROM prompts").fetchall()[0][0]
    if n_stored != len(prompts) or any(p.text not in by_text for p in prompts):
        raise SystemExit(f"{path} holds {n_stored} prompts, not exactly the benchmark's {len(prompts)}: use a new --db")

    c = capture(loaded, prompts, [by_text[p.text] for p in prompts], args.batch_size)
    print(f"torch capture: {c.seconds:.1f} s for {len(prompts)} prompts, {c.nbytes / 2**30:.2f} GiB held")
    capture_s = c.seconds
    functions = torch_dsts(loaded, c)
    torch_results: dict[str, tuple[float, list]] = {}
    with torch.no_grad():
        for dst in dsts:
            best, _, top = timed(lambda fn=functions[dst]: torch_top(fn), args.repeat, math.inf)
            torch_results[dst] = (best, top)
            print(f"  torch {dst}: {best:.3f} s")
    del c, functions
    gc.collect()

    rows: list[Row] = []
    with db.connect(path, read_only=True) as con:
        tmp = path.with_name(path.name + ".tmp")
        con.execute(f"SET memory_limit = '{args.memory_limit}'")
        con.execute(f"SET temp_directory = '{tmp}'")
        for dst in dsts:
            best, runs, top = timed(lambda dst=dst: sql_top(con, dst), args.repeat, args.slow_s)
            torch_s, ref = torch_results[dst]
            agree, same, ties, worst = compare(top, ref, TOLERANCE)
            rows.append(Row(dst, best, torch_s, runs, agree, same, ties, worst))
            print(f"  sql {dst}: {best:.3f} s ({runs} runs), x{best / torch_s:.1f} torch, agree={agree} {same}/{TOP}")

    node_s, node_cli_s = node_table_seconds(path, by_text[prompts[len(prompts) // 2].text], args.repeat)
    print(f"  node table of one prompt: {node_s:.3f} s (API, warm), {node_cli_s:.2f} s (`actwh top` command)")
    load = os.getloadavg()
    cfg = loaded.model.config
    body = (
        f"Command: `{command}` (machine: {os.cpu_count()} CPU cores, {platform.machine()}, duckdb "
        f"{duckdb.__version__}, torch {torch.__version__}, DuckDB memory_limit {args.memory_limit}).\n\n"
        f"{len(prompts)} prompts of exactly {N_TOKENS} tokens, ingested from {args.model} ({cfg.n_layers} layers, "
        f"{cfg.d_mlp} MLP neurons, {cfg.n_heads} heads) with the default locations; each query is "
        f"`SELECT prompt_id, token, token2, layer, head, node_index, value FROM <view> ORDER BY value DESC "
        f"LIMIT {TOP}` (raw dsts: `FROM activations WHERE dst = ... AND pass_type = 'forward'`) on a read-only "
        f"connection, warm, best of {args.repeat}. Torch: the same answer from the captured tensors held in "
        f"memory as stacked float32 (full tensor of the dst, then `topk({TOP})`), best of {args.repeat}; the "
        f"capture itself ({capture_s:.0f} s) is not in the ratio. Agreement: the top-20 values equal to "
        f"{TOLERANCE:g} of the largest; 'same nodes' counts keys in both lists, 'tied values' values within "
        f"1e-6 of another in the list, where either side may list a different node. One prompt's node table "
        f"(`Warehouse.top_nodes`, top and bottom 10 by act_times_grad): {node_s:.3f} s warm; `actwh top "
        f"--prompt-id` as a command, process start to exit: {node_cli_s:.2f} s. Load average at the end "
        f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1 / 5 / 15 min).\n\n" + table(rows, len(prompts))
    )
    print()
    print(body)
    if args.markdown:
        write_markdown(args.markdown, body, len(prompts))
        print(f"\nwrote the section to {args.markdown}")
    return 0 if all(r.agree for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
