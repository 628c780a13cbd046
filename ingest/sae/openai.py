"""OpenAI's sparse_autoencoder files, the autoencoders of the reference system (the Transformer Debugger):
one `torch.save`d state dict per layer, released as `.../autoencoders/{layer}.pt`.

Keys: `pre_bias` [n_inputs], `latent_bias` [n_latents], `encoder.weight` [n_latents, n_inputs],
`decoder.weight` [n_inputs, n_latents] (a tied autoencoder saves `decoder.linear.weight`, the encoder's own
weight, instead), `activation` (the class name, 'ReLU' or 'TopK'; missing: ReLU), `activation_state_dict`
({} for ReLU; {'k', 'postact_fn'} for TopK, whose module also saves them as `activation.k` and
`activation.postact_fn`), and the training statistics `stats_last_nonzero`, `latents_activation_frequency`
and `latents_mean_square`, which encoding does not read. Encode: act(encoder(x - pre_bias) + latent_bias);
decode: decoder(f) + pre_bias.

The package's loader (`Autoencoder.from_state_dict`) layer-normalises the input of a TopK autoencoder and
un-normalises its reconstruction (the file records no flag: TopK implies it, and the TopK releases were
trained on layer-normed inputs); so does actwh. The Transformer Debugger's own copy of the class never
normalises, and its registry lists only ReLU autoencoders, on which the two agree.

The file names no hook point: `--sae FILE.pt@HOOK`, or `DIR@HOOK` with DIR holding the hook's `{layer}.pt`.
HOOK may be a reference-system location name (`mlp_post_act`, `resid_delta_mlp`, ...), the layer then read
off the file's name. Loading never unpickles code (`torch.load(weights_only=True)`).
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from ingest.errors import SAEError
from ingest.sae.autoencoder import take
from ingest.sae.sites import hook_layer

WEIGHTS_SUFFIX = ".pt"
_STATISTICS = ("stats_last_nonzero", "latents_activation_frequency", "latents_mean_square")
_TENSORS = ("pre_bias", "latent_bias", "encoder.weight", "decoder.weight", "decoder.linear.weight")
_ACTIVATION = ("activation", "activation_state_dict", "activation.k", "activation.postact_fn")


def weights_file(path: Path, hook: str) -> Path:
    """The state dict a --sae value names: `path` itself, or in a folder the file of the hook's layer."""
    if not hook:
        raise SAEError(
            f"--sae {path}: an OpenAI sparse_autoencoder file names no hook point: pass --sae {path}@HOOK, e.g. "
            "@blocks.L.hook_mlp_out, or @resid_delta_mlp with the layer in the file's name (L.pt)"
        )
    if path.is_file():
        return path
    layer = hook_layer(hook)
    if layer is None:
        raise SAEError(
            f"--sae {path}@{hook}: the hook point names no layer to pick the folder's L.pt by: name the file "
            f"(--sae {path}/L.pt@{hook}) or a hook point with a layer (blocks.L....)"
        )
    file = path / f"{layer}{WEIGHTS_SUFFIX}"
    if not file.is_file():
        raise SAEError(f"--sae {path}@{hook}: the folder has no {file.name} for layer {layer}")
    return file


def file_layer(file: Path) -> int | None:
    """The layer a released file's name gives (`6.pt`), None for any other name."""
    return int(file.stem) if file.stem.isdigit() else None


def read(file: Path) -> dict[str, Any]:
    """SparseAutoencoder fields of one state dict; SAEError names a key or value not implemented."""
    state = _state_dict(file)
    unknown = sorted(set(state) - {*_TENSORS, *_ACTIVATION, *_STATISTICS})
    if unknown:
        raise SAEError(f"{file}: key {unknown[0]!r} is not part of a sparse_autoencoder state dict actwh reads")
    for key in (*_TENSORS, *_STATISTICS):
        if key in state and not isinstance(state[key], torch.Tensor):
            raise SAEError(f"{file}: {key} is a {type(state[key]).__name__}, not a tensor")
    fields = _activation(file, state)
    encoder = take(state, "encoder.weight", file)
    if encoder.dim() != 2:
        raise SAEError(f"{file}: encoder.weight has shape {tuple(encoder.shape)}, not [n_latents, n_inputs]")
    n_latents, n_inputs = encoder.shape
    if "decoder.linear.weight" in state:  # tied: the decoder is the encoder's weight transposed
        if "decoder.weight" in state:
            raise SAEError(f"{file}: both decoder.weight and decoder.linear.weight (tied): which decodes is unclear")
        if not torch.equal(take(state, "decoder.linear.weight", file), encoder):
            raise SAEError(f"{file}: decoder.linear.weight differs from encoder.weight, which a tied decoder shares")
        decoder_rows = encoder
    else:
        decoder = take(state, "decoder.weight", file)
        if tuple(decoder.shape) != (n_inputs, n_latents):
            raise SAEError(f"{file}: decoder.weight has shape {tuple(decoder.shape)}, expected {(n_inputs, n_latents)}")
        decoder_rows = decoder.T.contiguous()
    biases = {key: take(state, key, file) for key in ("pre_bias", "latent_bias")}
    for key, size in (("pre_bias", n_inputs), ("latent_bias", n_latents)):
        if tuple(biases[key].shape) != (size,):
            raise SAEError(
                f"{file}: {key} has shape {tuple(biases[key].shape)}, expected ({size},) from encoder.weight "
                f"{n_latents} x {n_inputs}"
            )
    return fields | {
        "w_enc": encoder.T.contiguous(),
        "b_enc": biases["latent_bias"],
        "w_dec": decoder_rows,
        "b_dec": biases["pre_bias"],
        "subtract_decoder_bias": True,
    }


def _state_dict(file: Path) -> dict[str, Any]:
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        code = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if code:  # the file pickles Python objects beyond tensors and containers
            raise SAEError(
                f"{file}: not a plain state dict: it pickles {code.group(1)}, which torch.load(weights_only=True) "
                "refuses; actwh never runs a file's code"
            ) from None
        detail = next((line for line in lines if "Unsupported" in line), lines[0] if lines else "")
        raise SAEError(f"{file}: not a file torch.save wrote ({type(exc).__name__}: {detail})") from None
    if not isinstance(state, dict):
        raise SAEError(f"{file}: holds a {type(state).__name__}, not a state dict")
    return state


def _activation(file: Path, state: dict[str, Any]) -> dict[str, Any]:
    """The fields of the activation (ReLU, or TopK with a ReLU after it); SAEError for anything else."""
    activation = state.get("activation", "ReLU")
    settings = dict(state.get("activation_state_dict") or {})
    if activation == "ReLU":
        if settings or "activation.k" in state or "activation.postact_fn" in state:
            raise SAEError(f"{file}: activation ReLU with settings {settings or 'activation.k'} is not implemented")
        return {"architecture": "standard"}
    if activation != "TopK":
        raise SAEError(f"{file}: activation {activation!r} is not implemented (ReLU and TopK are)")
    for key in ("k", "postact_fn"):  # the TopK module's own copies
        if f"activation.{key}" in state and settings.get(key, state[f"activation.{key}"]) != state[f"activation.{key}"]:
            raise SAEError(f"{file}: activation.{key} and activation_state_dict's {key} differ")
        settings.setdefault(key, state.get(f"activation.{key}"))
    extra = sorted(set(settings) - {"k", "postact_fn"})
    if extra:
        raise SAEError(f"{file}: activation_state_dict key {extra[0]!r} is not implemented (k and postact_fn are)")
    postact = settings["postact_fn"] or "ReLU"
    if postact != "ReLU":
        raise SAEError(f"{file}: activation_state_dict postact_fn {postact!r} is not implemented (ReLU is)")
    k = settings["k"]
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise SAEError(f"{file}: TopK needs a positive integer activation_state_dict k, found {k!r}")
    return {"architecture": "topk", "k": k, "layer_norm_input": True}
