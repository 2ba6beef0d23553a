"""The causal-LM loss without the whole logits tensor (`--loss_chunk_tokens N`).

transformers' path computes `lm_head` on every position ([batch, length, vocab] logits, upcast to
float32: 8 GiB for 16 x 4096 tokens of a 32,000-word vocabulary) and then the cross entropy. Here only the
positions with a label are kept (in LLaVA most are image, system and question tokens), and their
logits are computed `chunk_tokens` at a time inside activation checkpointing, so at most one chunk's
logits exist at once, in the forward and again in the backward. The head is called as a module, so
ZeRO-3 gathers its partitioned weight as for any other layer (Liger's fused kernel reads the weight
outside the module, which ZeRO-3 does not allow); every rank makes as many calls (the most any rank
needs, empty chunks past its own tokens), since each gather is a collective. The value and the gradients are those of
transformers' `ForCausalLMLoss` (labels shifted one left, -100 ignored, the mean over the labelled
tokens or the sum over `num_items_in_batch`), tested in float32 (tests/test_chunked_loss.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from llava.constants import IGNORE_INDEX


def _chunk_loss_sum(hidden: torch.Tensor, targets: torch.Tensor, lm_head) -> torch.Tensor:
    return F.cross_entropy(lm_head(hidden).float(), targets, reduction="sum")


def _chunk_count(n_tokens: int, chunk_tokens: int, device) -> int:
    """Chunks this rank computes: its own, or across ranks the most any rank needs. ZeRO-3 gathers the
    head's weight at every call of the module, a collective: every rank must call it as often."""
    count = -(-n_tokens // chunk_tokens)
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        on = device if dist.get_backend() != "gloo" else "cpu"
        most = torch.tensor([count], device=on)
        dist.all_reduce(most, op=dist.ReduceOp.MAX)
        count = int(most.item())
    return count


def chunked_causal_lm_loss(
    hidden: torch.Tensor,
    lm_head,
    labels: torch.Tensor,
    chunk_tokens: int,
    num_items_in_batch=None,
) -> torch.Tensor:
    """The loss of `hidden` ([batch, length, width], the decoder's last states) against `labels`
    ([batch, length], not yet shifted) through `lm_head`, `chunk_tokens` labelled positions at a time."""
    if chunk_tokens < 1:
        raise ValueError(f"--loss_chunk_tokens must be >= 1 (0 turns chunking off), got {chunk_tokens}")
    shifted = F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:].reshape(-1).to(hidden.device)
    keep = (shifted != IGNORE_INDEX).nonzero().squeeze(-1)
    states = hidden.reshape(-1, hidden.shape[-1]).index_select(0, keep)
    targets = shifted.index_select(0, keep)
    total = hidden.new_zeros((), dtype=torch.float32)
    for i in range(_chunk_count(states.shape[0], chunk_tokens, hidden.device)):
        part = slice(i * chunk_tokens, (i + 1) * chunk_tokens)  # (past the end: empty, adds 0)
        if torch.is_grad_enabled():
            total = total + checkpoint(
                _chunk_loss_sum, states[part], targets[part], lm_head, use_reentrant=False
            )
        else:
            total = total + _chunk_loss_sum(states[part], targets[part], lm_head)
    if num_items_in_batch is None:
        return total / keep.numel()  # (no labelled token: nan, as the mean of nothing in transformers)
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch
