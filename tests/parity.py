"""Comparing the hooked model with the transformers reference capture, location by location.

Every (location, layer, pass) the registry defines must be present on both sides and agree within the
tolerances, per prompt: forward values within FORWARD_TOL x max|ref|, gradients within GRADIENT_TOL x
max|ref|, where max|ref| is taken over that prompt's values of that location and layer.
"""

from __future__ import annotations

import os

import torch

from ingest.capture import CaptureSpec, Recorder
from ingest.objective import per_prompt_objective
from tests.reference import hf_capture
from warehouse.registry import LOCATIONS, PassType

# Observed worst errors over tests/test_parity.py's cases (float32, attention 13 to 90 times sharper
# than uniform): forward 2.4e-6 x max|ref| (attention probabilities and values), gradients 1.7e-5 x
# max|ref| (a norm scale's gradient, a sum that cancels; 1e-5 elsewhere); on SmolLM2 (30 layers)
# forward 7e-6, gradients 2.6e-5. The bounds leave a factor of 4 to 6 over the random models.
FORWARD_TOL = 1e-5
GRADIENT_TOL = 1e-4

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


def expected_keys(n_layers: int, held_final_scale: bool) -> dict[PassType, set[Key]]:
    """Every (location, layer) the registry defines, per pass."""
    keys: dict[PassType, set[Key]] = {PassType.FORWARD: set(), PassType.BACKWARD: set()}
    for name, loc in LOCATIONS.items():
        for layer in range(n_layers) if loc.has_layers else [None]:
            keys[PassType.FORWARD].add((name, layer))
            if loc.has_backward and not (held_final_scale and name == "resid.ln_f.scale"):
                keys[PassType.BACKWARD].add((name, layer))
    return keys


def relative_errors(ours: dict[Key, torch.Tensor], ref: dict[Key, torch.Tensor], b: int, n: int) -> dict[Key, float]:
    """max |ours - ref| / max |ref| per key, for prompt b of n tokens."""
    errors = {}
    for key, want in ref.items():
        got = causal(key[0], ours[key][b], n)
        want = causal(key[0], want, n)
        assert got.shape == want.shape, (key, got.shape, want.shape)
        errors[key] = float((got.double() - want.double()).abs().max() / want.abs().max().clamp_min(1e-30))
    return errors


def assert_parity(hf: torch.nn.Module, model, prompts: list[list[int]], target: int | None, distractor: int | None):  # noqa: ANN001, ANN201
    fwd, grads = run_ours(model, prompts, target, distractor)
    expected = expected_keys(model.config.n_layers, held_final_scale=target is not None)
    assert set(fwd) == expected[PassType.FORWARD], expected[PassType.FORWARD] ^ set(fwd)
    assert set(grads) == expected[PassType.BACKWARD], expected[PassType.BACKWARD] ^ set(grads)
    worst = {PassType.FORWARD: 0.0, PassType.BACKWARD: 0.0}
    for b, p in enumerate(prompts):
        ref_fwd, ref_grad, _ = hf_capture(hf, p, target, distractor)
        for pass_type, ours, ref, tol in (
            (PassType.FORWARD, fwd, ref_fwd, FORWARD_TOL),
            (PassType.BACKWARD, grads, ref_grad, GRADIENT_TOL),
        ):
            assert set(ref) == expected[pass_type], (pass_type, expected[pass_type] ^ set(ref))
            for key, err in relative_errors(ours, ref, b, len(p)).items():
                assert err <= tol, f"{pass_type} {key} prompt {b} ({len(p)} tokens): error {err:.3g} x max|ref|"
                worst[pass_type] = max(worst[pass_type], err)
    if os.environ.get("ACTWH_PARITY_REPORT"):
        print(f"worst relative error: forward {worst[PassType.FORWARD]:.2g}, backward {worst[PassType.BACKWARD]:.2g}")
    return worst
