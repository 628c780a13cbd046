"""Bad SAE input: one line naming the field and value, exit 2, and nothing stored.

Every case runs `actwh ingest --sae` in-process on the built-in gpt2-tiny (d_model 32, d_mlp 128, two
layers), with SAE folders (and OpenAI sparse_autoencoder files) written by each format's conventions
(tests/sae_oracle.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.sae_oracle import OracleSAE, write, write_openai
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


def _openai(tmp: Path, hook: str, file: str = "0.pt", d_in: int = 32, k: int | None = None, **changes: object) -> str:
    """A --sae value FILE@hook for a random sparse_autoencoder state dict; `changes` overwrite its entries
    (None: leave the entry out)."""
    gen = torch.Generator().manual_seed(0)
    d_sae = 64
    tensors = [torch.randn(*shape, generator=gen) for shape in ((d_in, d_sae), (d_sae,), (d_sae, d_in), (d_in,))]
    sae = OracleSAE("oa", "openai", "topk" if k else "standard", hook, "resid_post", 0, "", 0, *tensors, k=k)
    path = write_openai(sae, tmp / file, "")
    if changes:
        state = torch.load(path, weights_only=True) | changes
        torch.save({key: value for key, value in state.items() if value is not None}, path)
    return f"{path}@{hook}"


def _written(path: Path, content: object) -> Path:
    """`content` saved at `path` (bytes as they are, anything else with torch.save)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    return path


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
    "no_directory": (lambda tmp: ["--sae", tmp / "missing"], ["no such folder or file"]),
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
    "openai_without_hook": (
        lambda tmp: ["--sae", _openai(tmp, "resid_post_mlp").partition("@")[0]],
        ["names no hook point", "@HOOK"],
    ),
    "openai_location_name_without_layer": (
        lambda tmp: ["--sae", _openai(tmp, "resid_post_mlp", file="sae.pt")],
        ["'resid_post_mlp' names no layer"],
    ),
    "openai_layer_contradicts_file": (
        lambda tmp: ["--sae", _openai(tmp, "blocks.1.hook_resid_post")],
        ["reads layer 1", "for layer 0"],
    ),
    "openai_folder_without_the_layer": (
        lambda tmp: ["--sae", _openai(tmp, "blocks.1.hook_resid_post").replace("/0.pt@", "@")],
        ["no 1.pt", "layer 1"],
    ),
    "openai_d_in": (lambda tmp: ["--sae", _openai(tmp, "mlp_post_act", d_in=32)], ["d_in 32", "128"]),
    "openai_activation": (
        lambda tmp: ["--sae", _openai(tmp, "resid_post_mlp", activation="Identity")],
        ["activation 'Identity'", "ReLU and TopK"],
    ),
    "openai_postact": (
        lambda tmp: [
            "--sae",
            _openai(
                tmp,
                "resid_post_mlp",
                k=4,
                activation_state_dict={"k": 4, "postact_fn": "Identity"},
                **{"activation.postact_fn": "Identity"},
            ),
        ],
        ["postact_fn 'Identity'"],
    ),
    "openai_k": (
        lambda tmp: [
            "--sae",
            _openai(tmp, "resid_post_mlp", k=4, **{"activation.k": None, "activation_state_dict": {}}),
        ],
        ["positive integer", "k", "None"],
    ),
    "openai_unknown_key": (
        lambda tmp: ["--sae", _openai(tmp, "resid_post_mlp", **{"decoder.bias": torch.zeros(32)})],
        ["key 'decoder.bias'"],
    ),
    "openai_tied_decoder_differs": (
        lambda tmp: [
            "--sae",
            _openai(tmp, "resid_post_mlp", **{"decoder.weight": None, "decoder.linear.weight": torch.ones(64, 32)}),
        ],
        ["decoder.linear.weight differs"],
    ),
    "openai_decoder_shape": (
        lambda tmp: ["--sae", _openai(tmp, "resid_post_mlp", **{"decoder.weight": torch.ones(64, 32)})],
        ["decoder.weight has shape (64, 32)", "(32, 64)"],
    ),
    "openai_not_a_tensor": (
        lambda tmp: ["--sae", _openai(tmp, "resid_post_mlp", pre_bias=[0.0] * 32)],
        ["pre_bias is a list, not a tensor"],
    ),
    "openai_code": (
        lambda tmp: ["--sae", f"{_written(tmp / '0.pt', {'pre_bias': Path('x')})}@resid_post_mlp"],
        ["pathlib.PosixPath", "weights_only", "never runs"],
    ),
    "openai_not_torch": (
        lambda tmp: ["--sae", f"{_written(tmp / '0.pt', b'not a zip')}@resid_post_mlp"],
        ["not a file torch.save wrote"],
    ),
    "openai_not_a_dict": (
        lambda tmp: ["--sae", f"{_written(tmp / '0.pt', torch.zeros(3))}@resid_post_mlp"],
        ["holds a Tensor"],
    ),
    "not_a_pt_file": (lambda tmp: ["--sae", _written(tmp / "sae.bin", b"")], ["not a folder or a .pt file"]),
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


@pytest.mark.parametrize(
    "hook", ["blocks.1.hook_mlp_out", "blocks.1.attn.hook_z", "layers.1.mlp", "blocks.1.mlp.hook_post"]
)
def test_block_output_sites_of_a_model_that_norms_block_outputs_are_refused(hook: str) -> None:
    """Gemma 2 and OLMo 2 norm each block's output before the residual: the views model no SAE write
    through that norm, so only residual-stream sites are spliced there."""
    from dataclasses import replace

    from ingest.errors import SAEError
    from ingest.sae.sites import site_of
    from ingest.tiny import tiny_gpt2

    config = replace(tiny_gpt2().config, post_block_norms=True)
    assert site_of("blocks.1.hook_resid_post", config).location == "resid.post_mlp"
    with pytest.raises(SAEError, match="residual stream only"):
        site_of(hook, config)
