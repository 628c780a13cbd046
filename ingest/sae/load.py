"""`--sae DIR[@HOOK]` (or `FILE.pt@HOOK`): find the format, load the SAE, map its hook point onto the model
and check it fits, before anything is stored."""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError

from ingest.errors import SAEError
from ingest.model import ModelConfig
from ingest.sae import gemma_scope, openai, saelens, sparsify
from ingest.sae.autoencoder import SparseAutoencoder
from ingest.sae.record import check_distinct
from ingest.sae.sites import site_of

FORMATS = (
    f"cfg.json with {saelens.WEIGHTS_FILE} (SAELens), cfg.json with {sparsify.WEIGHTS_FILE} (sparsify), "
    f"{gemma_scope.WEIGHTS_FILE} (Gemma Scope), or an OpenAI sparse_autoencoder L{openai.WEIGHTS_SUFFIX} "
    "given as FILE@HOOK or DIR@HOOK"
)


def load_sae(spec: str, config: ModelConfig) -> SparseAutoencoder:
    """The SAE a --sae value names (DIR, DIR@HOOK for a format whose files name no hook point, or an OpenAI
    sparse_autoencoder FILE.pt@HOOK), checked against the model: a known site, d_in equal to the site's
    width, consistent tensor shapes. Raises SAEError with one line naming the field and value otherwise."""
    text, _, override = spec.partition("@")
    path = Path(text)
    if not path.is_dir() and not (path.is_file() and path.suffix == openai.WEIGHTS_SUFFIX):
        what = "not a folder or a .pt file" if path.exists() else "no such folder or file"
        raise SAEError(f"--sae {text}: {what} (give the folder holding the SAE's files, or an OpenAI FILE.pt@HOOK)")
    try:
        return _load(path, override, config)
    except (OSError, SafetensorError, zipfile.BadZipFile, KeyError, RuntimeError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SAEError(f"--sae {path}: cannot read its files ({type(exc).__name__}: {detail})") from None


def _load(directory: Path, override: str, config: ModelConfig) -> SparseAutoencoder:
    spec = f"{directory}@{override}" if override else str(directory)
    cfg_path = directory / "cfg.json"
    layer_given = None  # the layer the file's name gives, where the format names files by layer
    if directory.is_file() or (
        not cfg_path.is_file()
        and not (directory / gemma_scope.WEIGHTS_FILE).is_file()
        and any(directory.glob(f"*{openai.WEIGHTS_SUFFIX}"))
    ):
        fmt, weights_file = "openai", openai.weights_file(directory, override)
        hook_name, layer_given, fields = override, openai.file_layer(weights_file), openai.read(weights_file)
    elif cfg_path.is_file() and (directory / saelens.WEIGHTS_FILE).is_file():
        fmt, weights_file = "saelens", directory / saelens.WEIGHTS_FILE
        hook_name, fields = saelens.read(directory, _config(cfg_path))
    elif cfg_path.is_file() and (directory / sparsify.WEIGHTS_FILE).is_file():
        fmt, weights_file = "sparsify", directory / sparsify.WEIGHTS_FILE
        hook_name, fields = sparsify.read(directory, _config(cfg_path))
    elif (directory / gemma_scope.WEIGHTS_FILE).is_file():
        fmt, weights_file = "gemma_scope", directory / gemma_scope.WEIGHTS_FILE
        hook_name, fields = gemma_scope.read(directory, bool(override))
    else:
        raise SAEError(f"--sae {directory}: no SAE format actwh reads (expected {FORMATS})")
    if override and fmt == "saelens" and hook_name and override != hook_name:
        raise SAEError(f"--sae {spec}: the {fmt} config names hook point {hook_name!r}; drop @{override}")
    hook_name = override or hook_name
    if not hook_name:
        raise SAEError(f"{directory}: the config names no hook point (metadata.hook_name): pass --sae DIR@HOOK")
    site = site_of(hook_name, config, layer_given)
    declared = _config(cfg_path) if fmt in ("saelens", "sparsify") else {}
    for field, size in (("d_in", fields["w_enc"].shape[0]), ("d_sae", fields["w_enc"].shape[1])):
        if declared.get(field) not in (None, size):
            raise SAEError(f"{cfg_path}: {field} {declared[field]} but W_enc is {tuple(fields['w_enc'].shape)}")
    sae = SparseAutoencoder(
        fmt,
        site=site,
        path=str(weights_file if fmt == "openai" else directory),  # a folder of openai files: the layer's
        sha256=_sha256([weights_file, cfg_path] if fmt in ("saelens", "sparsify") else [weights_file]),
        **fields,
    )
    _check_shapes(sae, directory)
    width = site.width(config)
    if sae.d_in != width:
        raise SAEError(
            f"{directory}: d_in {sae.d_in} does not match {hook_name} of this model ({site.location}: {width} values)"
        )
    return sae


def _config(path: Path) -> dict:
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SAEError(f"{path}: not a readable JSON config ({exc})") from None
    if not isinstance(cfg, dict):
        raise SAEError(f"{path}: not a JSON object")
    return cfg


def _check_shapes(sae: SparseAutoencoder, directory: Path) -> None:
    d_in, d_sae = sae.d_in, sae.d_sae
    expected: dict[str, tuple[int, ...]] = {"w_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,)}
    expected |= {name: (d_sae,) for name in ("threshold", "b_mag", "r_mag") if getattr(sae, name) is not None}
    for name, shape in expected.items():
        tensor: torch.Tensor = getattr(sae, name)
        if tuple(tensor.shape) != shape:
            raise SAEError(
                f"{directory}: {name} has shape {tuple(tensor.shape)}, expected {shape} from W_enc {d_in} x {d_sae}"
            )
    if sae.k is not None and sae.k > d_sae:
        raise SAEError(f"{directory}: k {sae.k} is more than the SAE's {d_sae} latents")


def _sha256(paths: list[Path]) -> str:
    """Of the files' bytes in order: the weights, and the config that says how to read them."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def load_saes(specs: Sequence[str], config: ModelConfig, device: torch.device) -> tuple[SparseAutoencoder, ...]:
    """Every --sae value loaded and checked (one line for the first problem), on `device`."""
    saes = [load_sae(spec, config) for spec in specs]
    check_distinct(saes)
    return tuple(sae.to(device) for sae in saes)
