"""Test-side sparse autoencoders: files written in each format by that format's own conventions, an
encoder per format written from its conventions (never actwh's code), and a reference splice into a
transformers GPT-2 (reconstruction + detached error, as the reference system splices).

The formats: SAELens (6 and older configs), sparsify, Gemma Scope, and OpenAI's sparse_autoencoder (the
reference system's): a torch.save'd state dict per layer, whose TopK autoencoders layer-normalise their
input (its loader's rule) and un-normalise the reconstruction.

Weights are random, with biases (or thresholds) calibrated on the model's own activations at the site so
that a few percent of latents fire per token, as trained SAEs do.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

# The transformers module whose output (or input) each site is, per layer: GPT-2's, and Gemma 2's residual
# stream (gemma_resid_mid, the MLP norm's input, is for reading only: the residual passes beside it).
HF_SITES: dict[str, tuple[str, str]] = {
    # site kind -> (module path with {L}, 'out' or 'in')
    "resid_pre0": ("transformer.drop", "out"),
    "resid_post": ("transformer.h.{L}", "out"),
    "resid_mid": ("transformer.h.{L}.ln_2", "in"),
    "mlp_post": ("transformer.h.{L}.mlp.act", "out"),
    "mlp_out": ("transformer.h.{L}.mlp", "out"),
    "attn_out": ("transformer.h.{L}.attn", "out"),
    "z": ("transformer.h.{L}.attn.c_proj", "in"),
    "gemma_resid_pre0": ("model.layers.0", "in"),
    "gemma_resid_mid": ("model.layers.{L}.pre_feedforward_layernorm", "in"),
    "gemma_resid_post": ("model.layers.{L}", "out"),
    "llama_resid_mid": ("model.layers.{L}.post_attention_layernorm", "in"),
}


@dataclass
class OracleSAE:
    """One SAE as the test knows it: format, where it reads, its tensors, and how the test encodes."""

    name: str
    fmt: str  # saelens, saelens_old, sparsify, gemma_scope, openai
    architecture: str
    hook_name: str
    kind: str  # a key of HF_SITES
    layer: int
    location: str  # the registry location actwh should read (checked, not derived)
    site_layer: int | None
    w_enc: torch.Tensor  # [d_in, d_sae], float64
    b_enc: torch.Tensor
    w_dec: torch.Tensor  # [d_sae, d_in]
    b_dec: torch.Tensor
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    k: int | None = None
    rescale: bool = False
    normalize: bool = False  # openai TopK: x -> (x - mean) / (std + 1e-5), reconstruction * std + mean
    tied: bool = False  # openai: the decoder is the encoder's weight (w_dec = w_enc.T)
    directory: Path | None = None  # the SAE's folder, or an openai SAE's file
    spec: str = ""  # the --sae value

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents of x [..., d_in] (float64), by the format's conventions."""
        x = x.double()
        if self.normalize:
            mean, std = input_stats(x)
            x = (x - mean) / (std + 1e-5)
        if self.fmt == "gemma_scope":  # no b_dec subtraction; JumpReLU as mask * pre
            pre = x @ self.w_enc + self.b_enc
            return (pre > self.extra["threshold"]).double() * torch.relu(pre)
        if self.fmt == "sparsify":  # relu(encoder(x - b_dec)), then the k largest
            acts = torch.relu(torch.nn.functional.linear(x - self.b_dec, self.w_enc.T, self.b_enc))
            top = acts.topk(self.k, dim=-1)
            return torch.zeros_like(acts).scatter_(-1, top.indices, top.values)
        sae_in = x - self.b_dec
        if self.architecture == "gated":
            gate = sae_in @ self.w_enc + self.extra["b_gate"]
            magnitude = sae_in @ (self.w_enc * self.extra["r_mag"].exp()) + self.extra["b_mag"]
            return (gate > 0).double() * torch.relu(magnitude)
        hidden = sae_in @ self.w_enc + self.b_enc
        if self.architecture == "jumprelu":
            return torch.where(hidden > self.extra["threshold"], hidden, 0.0).clamp(min=0)
        if self.architecture == "topk":
            if self.rescale:
                hidden = hidden * self.w_dec.norm(dim=-1)
            top = hidden.topk(self.k, dim=-1)
            return torch.zeros_like(hidden).scatter_(-1, top.indices, torch.relu(top.values))
        return torch.relu(hidden)

    def decoder_rows(self) -> torch.Tensor:
        return self.w_dec / self.w_dec.norm(dim=-1, keepdim=True) if self.rescale else self.w_dec

    def decode(self, latents: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction of latents encoded from x."""
        out = latents @ self.decoder_rows() + self.b_dec
        if self.normalize:
            mean, std = input_stats(x.double())
            out = out * std + mean
        return out


def input_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sparse_autoencoder's LN statistics of x [..., d]: mean and unbiased std over the last axis, [..., 1]."""
    mean = x.mean(-1, keepdim=True)
    return mean, (x - mean).std(-1, keepdim=True)


def random_sae(
    name: str, fmt: str, architecture: str, hook_name: str, kind: str, layer: int, location: str,
    site_layer: int | None, activations: torch.Tensor, d_sae: int, seed: int, k: int | None = None,
    rescale: bool = False, normalize: bool = False, tied: bool = False,
) -> OracleSAE:  # fmt: skip
    """Random weights, with the biases or thresholds set from `activations` [n, d_in] (the site's values
    on the test prompts) so that about 6% of latents fire on them."""
    gen = torch.Generator().manual_seed(seed)
    x = activations.double()
    if normalize:
        mean, std = input_stats(x)
        x = (x - mean) / (std + 1e-5)
    d_in = x.shape[1]
    w_enc = torch.randn(d_in, d_sae, generator=gen, dtype=torch.float64) / d_in**0.5
    w_dec = torch.randn(d_sae, d_in, generator=gen, dtype=torch.float64) * 0.3 / d_sae**0.5 * 4
    if tied:
        w_dec = w_enc.T.clone()
    b_dec = 0.1 * torch.randn(d_in, generator=gen, dtype=torch.float64)
    centred = x if fmt == "gemma_scope" else x - b_dec
    pre = centred @ w_enc
    firing = torch.quantile(pre, 0.94, dim=0)
    noise = 0.05 * torch.randn(d_sae, generator=gen, dtype=torch.float64)
    sae = OracleSAE(name, fmt, architecture, hook_name, kind, layer, location, site_layer, w_enc, -firing + noise,
                    w_dec, b_dec, k=k, rescale=rescale, normalize=normalize, tied=tied)  # fmt: skip
    if architecture == "jumprelu":
        sae.b_enc = noise.clone()
        sae.extra["threshold"] = firing + 0.05 * torch.rand(d_sae, generator=gen, dtype=torch.float64)
    elif architecture == "gated":
        sae.extra = {
            "b_gate": -firing + noise,
            "b_mag": 0.5 + 0.1 * torch.randn(d_sae, generator=gen, dtype=torch.float64),
            "r_mag": 0.2 * torch.randn(d_sae, generator=gen, dtype=torch.float64),
        }
    elif architecture == "topk":
        sae.b_enc = noise.clone()
    return sae


def write_openai(sae: OracleSAE, file: Path, spec: str) -> Path:
    """Save `sae` as sparse_autoencoder's Autoencoder.state_dict() saves it: its parameters and statistics
    buffers, the activation's class name and settings (a TopK module's also under activation.*), a tied
    decoder as decoder.linear.weight (the encoder's own weight); `spec` is the --sae value."""
    file.parent.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(len(sae.name))
    d_sae = sae.w_enc.shape[1]
    encoder = sae.w_enc.T.float().contiguous()
    state: dict = {
        "pre_bias": sae.b_dec.float(),
        "latent_bias": sae.b_enc.float(),
        "stats_last_nonzero": torch.randint(0, 1000, (d_sae,), generator=gen),
        "latents_activation_frequency": torch.rand(d_sae, generator=gen),
        "latents_mean_square": torch.rand(d_sae, generator=gen),
        "encoder.weight": encoder,
    }
    if sae.tied:
        state["decoder.linear.weight"] = encoder
    else:
        state["decoder.weight"] = sae.w_dec.T.float().contiguous()
    if sae.architecture == "topk":
        state |= {"activation.k": sae.k, "activation.postact_fn": "ReLU", "activation": "TopK"}
        state["activation_state_dict"] = {"k": sae.k, "postact_fn": "ReLU"}
    else:
        state |= {"activation": "ReLU", "activation_state_dict": {}}
    torch.save(state, file)
    sae.directory, sae.spec = file, spec
    return file


def write(sae: OracleSAE, directory: Path) -> Path:
    """Save `sae` as its format saves it; returns the directory to pass to --sae."""
    directory.mkdir(parents=True, exist_ok=True)
    f32 = {k: v.float().contiguous() for k, v in sae.extra.items()}
    w_enc, b_enc, w_dec, b_dec = (t.float().contiguous() for t in (sae.w_enc, sae.b_enc, sae.w_dec, sae.b_dec))
    if sae.fmt == "sparsify":
        tensors = {"encoder.weight": w_enc.T.contiguous(), "encoder.bias": b_enc, "W_dec": w_dec, "b_dec": b_dec}
        save_file(tensors, directory / "sae.safetensors")
        cfg = {"activation": "topk", "expansion_factor": 4, "normalize_decoder": True,
               "num_latents": w_enc.shape[1], "k": sae.k, "multi_topk": False, "skip_connection": False,
               "transcode": False, "d_in": w_enc.shape[0]}  # fmt: skip
        (directory / "cfg.json").write_text(json.dumps(cfg))
    elif sae.fmt == "gemma_scope":
        np.savez(directory / "params.npz", W_enc=w_enc.numpy(), W_dec=w_dec.numpy(), b_enc=b_enc.numpy(),
                 b_dec=b_dec.numpy(), threshold=f32["threshold"].numpy())  # fmt: skip
    else:
        tensors = {"W_enc": w_enc, "W_dec": w_dec, "b_dec": b_dec}
        if sae.architecture == "gated":
            tensors |= f32
        else:
            tensors |= {"b_enc": b_enc, **f32}
        save_file(tensors, directory / "sae_weights.safetensors")
        if sae.fmt == "saelens":  # SAELens 6: architecture, metadata.hook_name
            cfg = {"architecture": sae.architecture, "d_in": w_enc.shape[0], "d_sae": w_enc.shape[1],
                   "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True, "normalize_activations": "none",
                   "reshape_activations": "hook_z" if sae.kind == "z" else "none",
                   "metadata": {"hook_name": sae.hook_name, "model_name": "gpt2", "prepend_bos": False}}  # fmt: skip
            if sae.architecture == "topk":
                cfg |= {"k": sae.k, "rescale_acts_by_decoder_norm": sae.rescale}
        else:  # before 6.0: hook_point at the top, the activation as activation_fn
            cfg = {"hook_point": sae.hook_name, "hook_point_layer": sae.layer, "d_in": w_enc.shape[0],
                   "d_sae": w_enc.shape[1], "activation_fn": "topk" if sae.k else "relu",
                   "activation_fn_kwargs": {"k": sae.k} if sae.k else {}, "apply_b_dec_to_input": True,
                   "normalize_activations": "expected_average_only_in", "context_size": 128}  # fmt: skip
        (directory / "cfg.json").write_text(json.dumps(cfg))
    sae.directory, sae.spec = directory, str(directory)
    return directory


def _module(model: nn.Module, sae: OracleSAE) -> tuple[nn.Module, str]:
    path, side = HF_SITES[sae.kind]
    return model.get_submodule(path.format(L=sae.layer)), side


@contextmanager
def at_site(model: nn.Module, sae: OracleSAE, change: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Replace the site's value x [1, T, d_in] by change(x) during forwards of `model`."""
    module, side = _module(model, sae)
    if side == "in":
        handle = module.register_forward_pre_hook(lambda m, args: (change(args[0]), *args[1:]))
    else:

        def hook(m: nn.Module, args: tuple, out: torch.Tensor | tuple) -> torch.Tensor | tuple:
            return (change(out[0]), *out[1:]) if isinstance(out, tuple) else change(out)

        handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def site_values(model: nn.Module, sae: OracleSAE, ids: list[int]) -> torch.Tensor:
    """The site's value [T, d_in] on one prompt."""
    kept: list[torch.Tensor] = []

    def keep(x: torch.Tensor) -> torch.Tensor:
        kept.append(x.detach()[0])
        return x

    with at_site(model, sae, keep), torch.no_grad():
        model(torch.tensor([ids]))
    return kept[0]


@dataclass
class SplicedGrads:
    latents: torch.Tensor  # [T, d_sae] forward
    latent_grads: torch.Tensor  # [T, d_sae]
    error: torch.Tensor  # [T, d_in]
    error_grads: torch.Tensor  # [T, d_in]
    write_scale: torch.Tensor  # [T]: what a unit latent's decoder row is multiplied by (the input's std, or 1)
    bias_write: torch.Tensor  # [T, d_in]: the reconstruction of zero latents (b_dec, un-normalised)


def reference_splice(model: nn.Module, sae: OracleSAE, ids: list[int], target: int, distractor: int) -> SplicedGrads:
    """Autograd through the reference splice: the site becomes decode(f) + (x - decode(f)).detach(), and
    the objective is logit[target] - logit[distractor] at the last token with the final LayerNorm's scale
    held constant (as actwh's logit-difference objective)."""
    found: dict[str, torch.Tensor] = {}

    def splice(x: torch.Tensor) -> torch.Tensor:
        latents = sae.encode(x).float()
        latents.retain_grad()
        reconstruction = sae.decode(latents.double(), x).float()
        error = (x - reconstruction).detach().requires_grad_()
        nothing = torch.zeros_like(latents.detach()[0]).double()
        scale = input_stats(x.detach()[0].double())[1][:, 0] if sae.normalize else torch.ones(x.shape[1]).double()
        found.update(latents=latents, error=error, scale=scale, bias=sae.decode(nothing, x.detach()[0]))
        return reconstruction + error

    ln_f = model.transformer.ln_f

    def normed_with_held_scale(m: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        x = args[0]
        centred = x - x.mean(-1, keepdim=True)
        scale = (centred.pow(2).mean(-1, keepdim=True) + m.eps).sqrt().detach()
        return centred / scale * m.weight + m.bias

    handle = ln_f.register_forward_hook(normed_with_held_scale)
    try:
        with at_site(model, sae, splice):
            logits = model(torch.tensor([ids])).logits[0, -1]
            (logits[target] - logits[distractor]).backward()
    finally:
        handle.remove()
    model.zero_grad()
    latents, error = found["latents"], found["error"]
    return SplicedGrads(
        latents.detach()[0], latents.grad[0], error.detach()[0], error.grad[0], found["scale"], found["bias"]
    )
