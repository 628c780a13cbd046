"""Bad SAE input: one line naming the field and value, exit 2, and nothing stored.

Every case runs `actwh ingest --sae` in-process on the built-in gpt2-tiny (d_model 32, d_mlp 128, two
layers), with SAE folders written by each format's conventions (tests/sae_oracle.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.sae_oracle import OracleSAE, write
from tests.test_bad_input import Result, assert_one_line_error, tiny
from warehouse import db


def _sae(tmp: Path, name: str, fmt: str = "saelens", hook: str = "blocks.0.hook_resid_post", d_in: int = 32,
         architecture: str = "standard", k: int | None = None, remove: str = "", **cfg: object) -> Path:  # fmt: skip
    """A random SAE folder; `cfg` entries overwrite its cfg.json's, `remove` names a tensor to leave out."""
    gen = torch.Generator().manual_seed(0)
    d_sae = 64
    tensors = [torch.randn(*shape, generator=gen) for shape in ((d_in, d_sae), (d_sae,), (d_sae, d_in), (d_in,))]
    sae = OracleSAE(name, fmt, architecture, hook, "resid_post", 0, "resid.post_mlp", 0, *tensors, k=k)
    if architecture == "jumprelu":
        sae.extra["threshold"] = torch.rand(d_sae, generator=gen)
    folder = write(sae, tmp / name)
    if remove:
        weights = folder / "sae_weights.safetensors"
        save_file({k: v for k, v in load_file(weights).items() if k != remove}, weights)
    if cfg:
        path = folder / "cfg.json"
        path.write_text(json.dumps(json.loads(path.read_text()) | cfg))
    return folder


def _refused(tmp: Path, *args: str | Path) -> str:
    """Ingest with `args`; the one error line, after checking that the warehouse holds nothing."""
    path = tmp / "wh"
    result: Result = tiny(path, "--prompt", "Hello world", *args)
    line = assert_one_line_error(result)
    if path.exists():
        con = db.connect(path, read_only=True)
        try:
            for table in ("facts", "prompts", "runs", "saes"):
                assert con.execute(f"SELECT count(*) FROM {table}").fetchall() == [(0,)], table
        finally:
            con.close()
    return line


CASES = {
    "no_format": (lambda tmp: ["--sae", (tmp / "empty").mkdir() or tmp / "empty"], ["no SAE format", "cfg.json"]),
    "no_directory": (lambda tmp: ["--sae", tmp / "missing"], ["no such directory"]),
    "d_in": (lambda tmp: ["--sae", _sae(tmp, "a", d_in=16)], ["d_in 16", "blocks.0.hook_resid_post", "32"]),
    "mlp_d_in": (lambda tmp: ["--sae", _sae(tmp, "a", hook="blocks.1.mlp.hook_post")], ["d_in 32", "128"]),
    "hook": (lambda tmp: ["--sae", _sae(tmp, "a", hook="blocks.0.attn.hook_q")], ["unknown hook point", "hook_q"]),
    "layer": (lambda tmp: ["--sae", _sae(tmp, "a", hook="blocks.7.hook_resid_post")], ["layer 7", "0..1"]),
    "architecture": (lambda tmp: ["--sae", _sae(tmp, "a", architecture="transcoder")], ["architecture", "transcoder"]),
    "normalisation": (
        lambda tmp: ["--sae", _sae(tmp, "a", normalize_activations="layer_norm")],
        ["normalize_activations", "layer_norm"],
    ),
    "head_index": (lambda tmp: ["--sae", _sae(tmp, "a", hook_head_index=2)], ["hook_head_index", "2"]),
    "activation_fn": (lambda tmp: ["--sae", _sae(tmp, "a", activation_fn="tanh-relu")], ["activation_fn", "tanh-relu"]),
    "jumprelu_without_threshold": (
        lambda tmp: ["--sae", _sae(tmp, "a", architecture="jumprelu", remove="threshold")],
        ["threshold"],
    ),
    "groupmax": (
        lambda tmp: ["--sae", _sae(tmp, "layers.0", fmt="sparsify", hook="layers.0", k=4, activation="groupmax")],
        ["activation", "groupmax"],
    ),
    "transcode": (
        lambda tmp: ["--sae", _sae(tmp, "layers.0", fmt="sparsify", hook="layers.0", k=4, transcode=True)],
        ["transcode"],
    ),
    "gemma_scope_without_site": (
        lambda tmp: ["--sae", _sae(tmp, "params", fmt="gemma_scope", architecture="jumprelu")],
        ["names no site", "@HOOK"],
    ),
    "two_at_one_place": (
        lambda tmp: ["--sae", _sae(tmp, "a"), "--sae", _sae(tmp, "b", fmt="saelens_old")],
        ["autoencoder_latent", "layer 0"],
    ),
    "latent_as_location": (lambda tmp: ["--locations", "online_autoencoder_latent"], ["--sae"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_sae_input_is_one_line_and_stores_nothing(tmp_path: Path, case: str) -> None:
    make, fragments = CASES[case]
    line = _refused(tmp_path, *make(tmp_path))
    for fragment in fragments:
        assert fragment in line, line


def test_another_sae_at_the_same_place_is_refused_in_a_later_ingest(tmp_path: Path) -> None:
    path = tmp_path / "wh"
    first = tiny(path, "--prompt", "Hello world", "--sae", _sae(tmp_path, "a"))
    assert first.returncode == 0, first.stderr
    con = db.connect(path, read_only=True)
    try:
        before = [con.execute(f"SELECT count(*) FROM {t}").fetchall() for t in ("facts", "runs", "saes", "weights")]
    finally:
        con.close()
    result = tiny(path, "--prompt", "Hello again", "--sae", _sae(tmp_path, "b", fmt="saelens_old"))
    assert_one_line_error(result, "already holds another SAE", "layer 0")
    con = db.connect(path, read_only=True)
    try:
        after = [con.execute(f"SELECT count(*) FROM {t}").fetchall() for t in ("facts", "runs", "saes", "weights")]
    finally:
        con.close()
    assert after == before


def test_a_lake_without_the_saes_table_is_refused_in_one_line(tmp_path: Path) -> None:
    """A warehouse of this schema version written before SAEs were recorded."""
    path = tmp_path / "wh"
    assert tiny(path, "--prompt", "Hello world").returncode == 0
    con = db.connect(path)
    try:
        con.execute("DROP TABLE saes")
    finally:
        con.close()
    assert_one_line_error(tiny(path, "--prompt", "Hello again", "--sae", _sae(tmp_path, "a")), "new --db")
