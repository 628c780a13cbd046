"""A checkpoint's tensors, taken one by one into the standard layout, with nothing left unread.

Every tensor a converter reads is taken from the state dict; whatever is left at the end was not used,
and a checkpoint with tensors its config does not explain (a norm the family has no place for, a bias
the config says is absent) is refused rather than run without them.
"""

from __future__ import annotations

import torch

from ingest.errors import ModelNotFound

Weights = dict[tuple[str, int | None], torch.Tensor]

# Buffers some transformers versions saved with the weights: masks and rotary tables, recomputed here.
_DERIVED_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq", ".attention.bias", ".masked_bias")


class StateDict:
    """Tensors by Hugging Face name, prefix removed, upcast to float32 when taken."""

    def __init__(self, family: str, tensors: dict[str, torch.Tensor], prefix: str) -> None:
        self.family = family
        self.tensors = {k.removeprefix(prefix): v for k, v in tensors.items()}
        self.original = {k.removeprefix(prefix): k for k in tensors}

    def take(self, name: str) -> torch.Tensor:
        try:
            return self.tensors.pop(name).to(torch.float32)
        except KeyError:
            raise ModelNotFound(f"checkpoint lacks tensor {name}: is it a complete {self.family} checkpoint?") from None

    def take_optional(self, name: str) -> torch.Tensor | None:
        return self.take(name) if name in self.tensors else None

    def split(self, fused: str, parts: dict[str, int]) -> None:
        """Replace the fused tensor `fused` by its consecutive row blocks, named and sized as `parts`
        (their sizes must add up to its rows); each block is then taken like any other tensor."""
        tensor = self.take(fused)
        if tensor.shape[0] != sum(parts.values()):
            raise ModelNotFound(
                f"checkpoint tensor {self.original[fused]} has {tensor.shape[0]} rows, not the "
                f"{sum(parts.values())} its config implies: is it a complete {self.family} checkpoint?"
            )
        for name, block in zip(parts, tensor.split(list(parts.values())), strict=True):
            self.tensors[name] = block
            self.original[name] = f"{self.original[fused]} (rows of {name})"

    def drop(self, name: str) -> None:
        """A tensor the model does not read by design (an unembedding tied to the embedding)."""
        self.tensors.pop(name, None)

    def finish(self) -> None:
        left = sorted(k for k in self.tensors if not k.endswith(_DERIVED_SUFFIXES))
        if left:
            more = f" and {len(left) - 1} more" if len(left) > 1 else ""
            raise ModelNotFound(
                f"checkpoint tensor {self.original[left[0]]}{more} has no place in a {self.family} model "
                "with this config: refusing rather than ignoring it"
            )


def heads_from_rows(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """nn.Linear (heads * d_head, d_model) -> (heads, d_model, d_head)."""
    return weight.reshape(heads, -1, weight.shape[1]).transpose(1, 2).contiguous()


def heads_from_columns(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """nn.Linear (d_model, heads * d_head), an output projection -> (heads, d_head, d_model)."""
    return weight.T.reshape(heads, -1, weight.shape[0]).contiguous()


def zeros(*shape: int) -> torch.Tensor:
    return torch.zeros(shape, dtype=torch.float32)
