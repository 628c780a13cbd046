"""Comparing the hooked model with the transformers reference capture, location by location.

Every (location, layer, pass) the registry defines must be present on both sides and agree within the
tolerances, prompt by prompt: forward values within FORWARD_TOL x max|ref|, gradients within GRADIENT_TOL
(DEEP_GRADIENT_TOL for a 30-layer model) x max|ref|, where max|ref| is taken over the batch's values of that
location and layer.
"""

from __future__ import annotations

import os

import torch

from ingest.capture import CaptureSpec, Recorder
from ingest.objective import per_prompt_objective
from tests.reference import hf_capture
from warehouse.registry import LOCATIONS, PassType

# Observed worst errors, relative to the batch's max|ref| per location and layer (float32):
# - random models (tests/test_parity.py, attention 10 to 90 times sharper than uniform): forward 2.4e-6
#   (attention values and probabilities), gradients 6.6e-6 (norm scales' gradients, sums that cancel);
# - SmolLM2 (30 layers, tests/test_gguf_and_tokenizers.py): forward 3.6e-6, gradients 2.0e-5 (norm
#   scales again; 6e-6 elsewhere).
# The bounds leave a factor of about 3 (forward) and 5 (gradients) over the worst.
FORWARD_TOL = 1e-5
GRADIENT_TOL = 3e-5
DEEP_GRADIENT_TOL = 1e-4  # through 30 layers

EVERYTHING = CaptureSpec(
    {
        name: (PassType.FORWARD, PassType.BACKWARD) if loc.has_backward else (PassType.FORWARD,)
        for name, loc in LOCATIONS.items()
    }
)
Key = tuple[str, int | None]


def run_ours(model, prompts: list[list[int]], target: int | None, distractor: int | None):  # noqa: ANN001, ANN201
    lengths = torch.tensor([len(p) for p in prompts])
    ids = torch.zeros((len(prompts), int(lengths.max())), dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, : len(p)] = torch.tensor(p)
    rec = Recorder(EVERYTHING, backward=True)
    logits = model.forward(ids, lengths, rec, hold_final_scale=target is not None)
    n = len(prompts)
    per_prompt_objective(logits, ids, lengths, [target] * n, [distractor] * n).sum().backward()
    return rec.forward, rec.gradients()


def causal(name: str, t: torch.Tensor, n: int) -> torch.Tensor:
    """The first n tokens; for (query, key) locations only the pairs with key <= query."""
    if LOCATIONS[name].n_token_axes == 2:
        return t[:n, :n][torch.tril(torch.ones(n, n, dtype=torch.bool))]
    return t[:n]


def expected_keys(config: object, held_final_scale: bool) -> dict[PassType, set[Key]]:
    """Every (location, layer) the registry defines for a model with this config, per pass."""
    keys: dict[PassType, set[Key]] = {PassType.FORWARD: set(), PassType.BACKWARD: set()}
    for name, loc in LOCATIONS.items():
        if loc.only_with and not getattr(config, loc.only_with):
            continue
        for layer in range(config.n_layers) if loc.has_layers else [None]:
            keys[PassType.FORWARD].add((name, layer))
            if loc.has_backward and not (held_final_scale and name == "resid.ln_f.scale"):
                keys[PassType.BACKWARD].add((name, layer))
    return keys


def relative_errors(
    ours: dict[Key, torch.Tensor], refs: list[dict[Key, torch.Tensor]], prompts: list[list[int]]
) -> dict[tuple[Key, int], float]:
    """max |ours - ref| over each prompt's values, over max |ref| over the batch's, per key and prompt.

    The scale is the batch's: a location can be legitimately zero for one prompt (a norm scale's gradient
    when a one-token context makes it irrelevant), where only float32 noise would be left to compare.
    """
    diffs: dict[tuple[Key, int], float] = {}
    scale: dict[Key, float] = {}
    for b, (p, ref) in enumerate(zip(prompts, refs, strict=True)):
        for key, want in ref.items():
            got = causal(key[0], ours[key][b], len(p))
            want = causal(key[0], want, len(p))
            assert got.shape == want.shape, (key, got.shape, want.shape)
            diffs[(key, b)] = float((got.double() - want.double()).abs().max())
            scale[key] = max(scale.get(key, 0.0), float(want.abs().max()))
    return {(key, b): diff / max(scale[key], 1e-30) for (key, b), diff in diffs.items()}


def assert_parity(  # noqa: ANN201
    hf: torch.nn.Module,
    model,  # noqa: ANN001
    prompts: list[list[int]],
    target: int | None,
    distractor: int | None,
    gradient_tol: float = GRADIENT_TOL,
):
    """Every expected (location, layer, pass) of ours against transformers; the worst errors per pass."""
    fwd, grads = run_ours(model, prompts, target, distractor)
    expected = expected_keys(model.config, held_final_scale=target is not None)
    assert set(fwd) == expected[PassType.FORWARD], expected[PassType.FORWARD] ^ set(fwd)
    assert set(grads) == expected[PassType.BACKWARD], expected[PassType.BACKWARD] ^ set(grads)
    captures = [hf_capture(hf, p, target, distractor) for p in prompts]
    worst = {}
    for pass_type, ours, refs, tol in (
        (PassType.FORWARD, fwd, [c[0] for c in captures], FORWARD_TOL),
        (PassType.BACKWARD, grads, [c[1] for c in captures], gradient_tol),
    ):
        for ref in refs:
            assert set(ref) == expected[pass_type], (pass_type, expected[pass_type] ^ set(ref))
        errors = relative_errors(ours, refs, prompts)
        for (key, b), err in errors.items():
            assert err <= tol, f"{pass_type} {key} prompt {b} ({len(prompts[b])} tokens): error {err:.3g} x max|ref|"
        worst[pass_type] = max(errors.values())
    if os.environ.get("ACTWH_PARITY_REPORT"):
        print(f"worst relative error: forward {worst[PassType.FORWARD]:.2g}, backward {worst[PassType.BACKWARD]:.2g}")
    return worst
