"""Every location of the hooked model equals Hugging Face transformers on the same weights.

Forward values to 1e-5 x max|ref|, gradients to 1e-4 relative, with prompts of mixed lengths run as one
padded batch on our side and one by one on the reference side.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ingest.capture import CaptureSpec, Recorder
from ingest.checkpoints import load_model
from ingest.objective import per_prompt_objective
from tests.reference import hf_capture
from warehouse.registry import LOCATIONS, PassType

transformers = pytest.importorskip("transformers")

EVERYTHING = CaptureSpec({name: (PassType.FORWARD, PassType.BACKWARD) for name in LOCATIONS})
PROMPTS = [[464, 3139, 286, 4881, 318], [15496, 11, 995, 0, 383, 2068, 7586, 21831, 18045], [1212]]


def _hf_dir(tmp: Path, model: torch.nn.Module) -> Path:
    model.save_pretrained(tmp)
    return tmp


@pytest.fixture(scope="module")
def gpt2_pair(tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        n_layer=2, n_embd=64, n_head=4, n_positions=64, vocab_size=50257, attn_implementation="eager"
    )
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    path = _hf_dir(tmp_path_factory.mktemp("gpt2"), hf)
    return hf, load_model(str(path))


@pytest.fixture(scope="module")
def llama_pair(tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=50257,
        max_position_embeddings=64,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        attn_implementation="eager",
    )
    hf = transformers.LlamaForCausalLM(cfg).eval()
    path = _hf_dir(tmp_path_factory.mktemp("llama"), hf)
    # a random Llama directory has no tokenizer of its own: borrow GPT-2's so the loader can run
    from ingest import checkpoints, tokenizers

    loaded = checkpoints.LoadedModel(
        "llama-random", checkpoints.build(*checkpoints.read_hf_dir(path)), tokenizers.gpt2_tokenizer(), ""
    )
    return hf, loaded


def _ours(loaded, prompts, target, distractor):
    model = loaded.model
    lengths = torch.tensor([len(p) for p in prompts])
    ids = torch.zeros((len(prompts), int(lengths.max())), dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, : len(p)] = torch.tensor(p)
    rec = Recorder(EVERYTHING, backward=True)
    logits = model.forward(ids, lengths, rec, hold_final_scale=target is not None)
    n = len(prompts)
    per_prompt_objective(logits, ids, lengths, [target] * n, [distractor] * n).sum().backward()
    return rec.forward, rec.gradients()


def _slice(name: str, t: torch.Tensor, n: int) -> torch.Tensor:
    loc = LOCATIONS[name]
    t = t[:n, :n] if loc.n_token_axes == 2 else t[:n]
    if loc.n_token_axes == 2:  # only causal pairs are meaningful
        mask = torch.tril(torch.ones(n, n, dtype=torch.bool))
        t = t[mask]
    return t


def _compare(ours: dict, ref: dict, n: int, b: int, rel: float, what: str) -> list[str]:
    checked = []
    for key, ref_t in ref.items():
        name, layer = key
        if key not in ours:
            continue
        got = _slice(name, ours[key][b], n)
        want = _slice(name, ref_t, n)
        if name == "logits":
            got, want = got[:n], want[:n]
        assert got.shape == want.shape, (what, key, got.shape, want.shape)
        tol = rel * float(want.abs().max()) + 1e-12
        err = float((got - want).abs().max())
        assert err <= tol, f"{what} {key} prompt {b}: max |diff| {err:.3g} > {tol:.3g}"
        checked.append(name)
    return checked


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("objective", ["logit_diff", "next_token_ce"])
def test_every_location_matches_transformers(family: str, objective: str, gpt2_pair, llama_pair) -> None:
    hf, loaded = gpt2_pair if family == "gpt2" else llama_pair
    target, distractor = (6342, 11307) if objective == "logit_diff" else (None, None)
    prompts = PROMPTS if objective == "logit_diff" else PROMPTS[:2]
    fwd, grads = _ours(loaded, prompts, target, distractor)
    forward_checked: set[str] = set()
    backward_checked: set[str] = set()
    for b, p in enumerate(prompts):
        ref_fwd, ref_grad, _ = hf_capture(hf, p, target, distractor)
        forward_checked |= set(_compare(fwd, ref_fwd, len(p), b, 1e-5, "forward"))
        backward_checked |= set(_compare(grads, ref_grad, len(p), b, 1e-4, "backward"))
    assert forward_checked == set(LOCATIONS), set(LOCATIONS) - forward_checked
    expected_grads = {
        "resid.post_emb",
        "resid.post_mlp_ln",
        "resid.post_attn",
        "resid.post_attn_ln",
        "resid.delta_attn",
        "resid.delta_mlp",
        "resid.post_mlp",
        "mlp.pre_act",
        "mlp.post_act",
        "attn.v_out",
        "attn.qk_probs",
        "attn.v",
        "resid.post_ln_f",
    }
    if family == "gpt2":
        expected_grads |= {"attn.q", "attn.k"}
    assert expected_grads <= backward_checked, expected_grads - backward_checked
