"""Every benchmark command runs to the end in its quickest mode on the tiny model: a benchmark nothing
runs breaks unnoticed when the code it times moves (bench.ingest once patched a function that had left
ingest.worker). Each runs as a user runs it, `python -m bench.NAME ...` in a fresh process; the check is
its exit status and the line that says it finished. The figures themselves are not checked here.

The ones that take longer than a default-suite test should (several processes, each loading torch) are
slow-marked; `.ci/run` runs them (about 4 minutes on 2 idle cores)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests import postgres

ROOT = Path(__file__).resolve().parent.parent
TINY = ("--model", "gpt2-tiny")


def _bench(*args: object, timeout: float = 600) -> str:
    """Run `python ARGS` from the repository root; its stdout, after asserting a clean exit."""
    done = subprocess.run(
        [sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_mutations_list_names_every_mutation_with_its_tests() -> None:
    out = _bench("bench/mutations.py", "--list")
    lines = out.splitlines()
    assert len(lines) > 50 and all(": " in line and line.endswith("]") for line in lines), out[-2000:]


def test_ingest_bench_times_the_worker_it_patches() -> None:
    """The actwh path wraps the worker's model pass and arrow conversion to time them: both figures must
    appear, so a wrapped function that moved to another module (never called through the wrapper, its
    time silently missing) fails here, as an attribute that no longer exists does."""
    out = _bench("-m", "bench.ingest", "--quick", "--prompts", "2", "--tokens", "6", "--paths", "actwh")
    lines = out.splitlines()
    (at,) = [i for i, line in enumerate(lines) if line.startswith("actwh ") and "tokens in" in line]
    assert "model pass" in lines[at + 1] and "arrow conversion" in lines[at + 1], out
    assert "bottleneck:" in out


@pytest.mark.slow
def test_ingest_bench_runs_every_path() -> None:
    out = _bench("-m", "bench.ingest", "--quick", "--prompts", "2", "--tokens", "6")
    for path in ("actwh", "actwh-bf16", "model", "baseline"):
        assert any(line.startswith(f"{path} ") and "tokens in" in line for line in out.splitlines()), out
    assert "actwh float32 tokens/s / baseline's" in out


@pytest.mark.slow
def test_many_runs_bench_reports_sizes_and_latencies() -> None:
    out = _bench("-m", "bench.many_runs", *TINY, "--runs", "2", "--repeat", "1")
    assert '"summaries_and_examples_over_facts"' in out and '"latency_after_last_over_first"' in out, out


@pytest.mark.slow
def test_views_bench_agrees_with_torch(tmp_path: Path) -> None:
    """Exit 0 only when every Tier-1 top 20 from the views agrees with torch's."""
    out = _bench("-m", "bench.views", *TINY, "--prompts", "3", "--repeat", "1", "--db", tmp_path / "views")
    assert out.count("agree=True") == 12, out


@pytest.mark.slow
def test_direct_effect_plans_bench_compares_two_versions_of_the_macros(tmp_path: Path) -> None:
    _bench("-m", "bench.views", *TINY, "--prompts", "2", "--repeat", "1", "--ingest-only", "--db", tmp_path / "v")
    out = _bench("-m", "bench.direct_effect_plans", "--db", tmp_path / "v", "--baseline", "HEAD", "--repeat", "1",
                 "--only", "direct_effects")  # fmt: skip
    assert "| direct_effects |" in out and "| yes |" in out, out


@pytest.mark.slow
def test_first_use_bench() -> None:
    out = _bench("-m", "bench.first_use", *TINY)
    assert "make demo's commands:" in out, out


@pytest.mark.slow
def test_device_ingest_bench_on_the_cpu() -> None:
    out = _bench("-m", "bench.device_ingest", "--prompts", "2", "--words", "2", "--batch-size", "2", "--layers", "1",
                 "--device", "cpu")  # fmt: skip
    assert '"end_to_end_tokens_per_s"' in out, out


@pytest.mark.slow
def test_memory_bench_long_prompt_and_scaling() -> None:
    out = _bench("-m", "bench.memory", *TINY, "--long", "40")
    assert "40-token prompt: stored in" in out and "peak" in out and "the worker's estimate" in out, out
    out = _bench("-m", "bench.memory", "--scaling", "2", "4")
    assert "ratio 4/2:" in out, out


@pytest.mark.slow
def test_scale_bench_ingest_queries_and_overhead(tmp_path: Path) -> None:
    lake = tmp_path / "scale"
    out = _bench("-m", "bench.scale", "ingest", "--db", lake, "--tokens", "40", *TINY)
    assert '"prompts": 2' in out, out
    out = _bench("-m", "bench.scale", "queries", "--db", lake, "--repeat", "1", "--layer", "1", "--node", "3")
    assert '"node-stats"' in out, out
    out = _bench("-m", "bench.scale", "overhead", "--tokens", "20", *TINY)
    assert '"overhead_cpu"' in out, out


def test_sae_storage_bench() -> None:
    out = _bench("-m", "bench.sae_storage", *TINY, "--layer", "0", "--prompts", "2", "--tokens", "8",
                 "--expansion", "2", "--k", "4")  # fmt: skip
    assert "| SAE latents, both passes |" in out, out


@pytest.mark.slow
def test_workers_bench() -> None:
    if postgres._tool("initdb") is None or postgres._tool("pg_ctl") is None:
        pytest.skip("PostgreSQL is not installed (no initdb/pg_ctl): bench.workers needs it")
    out = _bench("-m", "bench.workers", *TINY, "--prompts", "4", "--workers", "1", "2")
    rows = [line for line in out.splitlines() if line.startswith("| 1 |") or line.startswith("| 2 |")]
    assert len(rows) == 2, out


@pytest.mark.slow
def test_edges_bench(tmp_path: Path) -> None:
    out = _bench("-m", "bench.edges", *TINY, "--prompts", "4", "--repeat", "1", "--db", tmp_path / "edges")
    assert "edges benchmark finished" in out and "edges_into one neuron, one prompt" in out, out


def test_summary_merge_scale_bench(tmp_path: Path) -> None:
    out = _bench("-m", "bench.summary_merge_scale", "--nodes", "300")
    assert '"pool_rewrite_seconds"' in out, out
