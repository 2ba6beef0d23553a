"""`attn_implementation="torch_varlen"`: padding-free attention from PyTorch itself, no flash-attn.

PyTorch (>= 2.10) ships flash-attention's variable-length kernel as
`torch.nn.attention.varlen.varlen_attn` (CUDA). Registered with transformers' public
`AttentionInterface` / `AttentionMaskInterface` under the name "torch_varlen", it serves
LLaVA's packed batches the way flash_attention_2 does: the samples of a batch laid end to end
([1, N], no pads; llava.model.packed_inputs "flat" layout) with `cu_seq_lens_q/k`, attention
kept inside each sample. Padded batches (a 2-D attention mask, no cache) are unpadded into the
same kernel, as transformers does for flash-attention. Anything else (a KV cache, dropout)
goes to transformers' SDPA path.

Without CUDA or without the kernel, the same cases run through SDPA one sample at a time, which
gives the same numbers (the CPU tests check the wiring this way).

Call `register_varlen_attention()` before building a model with it; it is idempotent.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

NAME = "torch_varlen"


def varlen_kernel():
    """`torch.nn.attention.varlen.varlen_attn`, or None when this PyTorch has none."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


def register_varlen_attention() -> str:
    """Register "torch_varlen" with transformers; returns the name to pass as attn_implementation."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import flash_attention_mask

    AttentionInterface.register(NAME, torch_varlen_attention_forward)
    AttentionMaskInterface.register(NAME, flash_attention_mask)  # None, or the 2-D padding mask
    return NAME


def _segment_attention(q, k, v, cu: torch.Tensor, scale: float, causal: bool) -> torch.Tensor:
    """Reference path: [T, H, D] tensors, SDPA per segment of `cu`."""
    out = torch.empty_like(q)
    bounds = cu.tolist()
    for a, b in zip(bounds[:-1], bounds[1:]):
        if b > a:
            seg = F.scaled_dot_product_attention(
                q[a:b].transpose(0, 1),
                k[a:b].transpose(0, 1),
                v[a:b].transpose(0, 1),
                is_causal=causal,
                scale=scale,
            )
            out[a:b] = seg.transpose(0, 1)
    return out


def _varlen(q, k, v, cu: torch.Tensor, max_len: int, scale: float, causal: bool) -> torch.Tensor:
    """Attention within the segments of `cu` for [T, H, D] tensors (k/v heads already repeated)."""
    kernel = varlen_kernel() if q.is_cuda else None
    if kernel is None:
        return _segment_attention(q, k, v, cu, scale, causal)
    return call_kernel(kernel, q, k, v, cu, max_len, scale, causal)


def call_kernel(kernel, q, k, v, cu: torch.Tensor, max_len: int, scale: float, causal: bool) -> torch.Tensor:
    """`kernel` (varlen_attn) called with the arguments its PyTorch version takes."""
    params = inspect.signature(kernel).parameters
    kwargs = {}
    if "scale" in params:
        kwargs["scale"] = scale
    elif abs(scale - q.shape[-1] ** -0.5) > 1e-12:  # torch 2.10 scales by 1/sqrt(head_dim) only
        q = q * (scale * q.shape[-1] ** 0.5)
    if "window_size" in params:  # torch >= 2.11
        kwargs["window_size"] = (-1, 0) if causal else (-1, -1)
    else:  # torch 2.10
        kwargs["is_causal"] = causal
    cu = cu.to(device=q.device, dtype=torch.int32)
    return kernel(q, k, v, cu, cu, max_len, max_len, **kwargs)


def _mask_4d(mask_2d: torch.Tensor, q_len: int, causal: bool) -> torch.Tensor:
    """[B, 1, q, kv] boolean mask from a 2-D key mask; queries are the last `q_len` positions."""
    kv_len = mask_2d.shape[1]
    allowed = mask_2d.bool()[:, None, None, :].expand(-1, 1, q_len, -1)
    if causal:
        q_pos = torch.arange(kv_len - q_len, kv_len, device=mask_2d.device)[:, None]
        allowed = allowed & (torch.arange(kv_len, device=mask_2d.device)[None, :] <= q_pos)
    return allowed


def torch_varlen_attention_forward(
    module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, is_causal=None, **kwargs
):
    """transformers attention function: query [B, H, T, D], key/value [B, H_kv, T, D] -> [B, T, H, D]."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    batch, heads, q_len, dim = query.shape
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    cu = kwargs.get("cu_seq_lens_q")
    padded = attention_mask is not None and attention_mask.ndim == 2 and attention_mask.shape[1] == q_len
    if (dropout and module.training) or key.shape[2] != q_len or (cu is None and not padded):
        if attention_mask is not None and attention_mask.ndim == 2:
            attention_mask = _mask_4d(attention_mask, q_len, causal)
        return sdpa_attention_forward(
            module,
            query,
            key,
            value,
            attention_mask,
            dropout=dropout,
            scaling=scaling,
            is_causal=is_causal,
            **kwargs,
        )
    scale = scaling if scaling is not None else dim**-0.5
    groups = heads // key.shape[1]
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    q, k, v = (x.transpose(1, 2) for x in (query, key, value))  # [B, T, H, D]
    if cu is not None:
        if batch != 1:
            raise ValueError("torch_varlen with cu_seq_lens needs the samples laid end to end in one row")
        max_len = kwargs.get("max_length_q") or int((cu[1:] - cu[:-1]).max())
        out = _varlen(q[0], k[0], v[0], cu, max_len, scale, causal)
        return out[None], None
    # Padded batch: the real tokens of each row, end to end, then back into place.
    keep = attention_mask.bool()
    lengths = keep.sum(dim=1)
    cu = F.pad(torch.cumsum(lengths, 0), (1, 0)).to(torch.int32)
    out = _varlen(q[keep], k[keep], v[keep], cu, int(lengths.max()), scale, causal)
    full = q.new_zeros(q.shape)
    full[keep] = out
    return full, None
