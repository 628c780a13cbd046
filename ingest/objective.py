"""The backward objective, per prompt.

With a target: mean target logit minus mean distractor logit at the last token, the final norm's scale
held constant (the reference default, which makes the final-residual gradient closed-form). Without a
target: the mean next-token cross-entropy over the prompt.
"""

from __future__ import annotations

import tiktoken
import torch
import torch.nn.functional as F

from ingest.errors import TokenError
from ingest.prompts import text_problem
from ingest.tokenizers import encode

LOGIT_DIFF = "logit_diff"
NEXT_TOKEN_CE = "next_token_ce"


def single_token(tokenizer: tiktoken.Encoding, text: str, role: str, special_tokens: bool = True) -> int:
    """The one token `text` is (never with a BOS); TokenError showing how it splits otherwise, or saying
    what in it is not text."""
    problem = text_problem(text)
    if problem is not None:
        raise TokenError(f"{role} {text!r}: {problem}: give UTF-8 text")
    ids = encode(tokenizer, text, special_tokens)
    if len(ids) != 1:
        pieces = [tokenizer.decode([i]) for i in ids]
        raise TokenError(
            f"{role} {text!r} is {len(ids)} tokens {pieces}, not one: pass a single token"
            + (f", e.g. {pieces[0]!r}" if pieces else "")
        )
    return ids[0]


def objective_kind(target_id: int | None) -> str:
    return LOGIT_DIFF if target_id is not None else NEXT_TOKEN_CE


def per_prompt_objective(
    logits: torch.Tensor,
    ids: torch.Tensor,
    lengths: torch.Tensor,
    target_ids: list[int | None],
    distractor_ids: list[int | None],
) -> torch.Tensor:
    """One objective value per prompt of a right-padded batch; their sum is what backward runs on, and
    prompts never interact, so each prompt's gradients are its own objective's."""
    values = []
    for b, (target, distractor) in enumerate(zip(target_ids, distractor_ids, strict=True)):
        n = int(lengths[b])
        if target is not None:
            last = logits[b, n - 1]
            values.append(last[target] - (last[distractor] if distractor is not None else 0.0))
        else:
            values.append(F.cross_entropy(logits[b, : n - 1], ids[b, 1:n]))
    return torch.stack(values)
