"""Training entry with memory-efficient attention.

flash-attention 2 when flash-attn is installed and a CUDA GPU is present; on a CUDA GPU without
flash-attn, PyTorch's own flash varlen kernel ("torch_varlen", llava/model/varlen_attention.py:
padded batches are unpadded into it, packed ones run end to end; 1.8x the SDPA path on a 7B-shaped
stage-2 step, 2.7x with --packing, see bench/RESULTS.md); otherwise PyTorch SDPA. Each fallback
says why.
"""

from __future__ import annotations

import os


def pick_attn_implementation() -> str:
    """The attention implementation for this machine (see the module docstring); prints fallbacks."""
    import torch

    try:
        import flash_attn  # noqa: F401
    except ImportError as e:
        reason = f"flash-attn is not installed ({e}); `pip install -e .[flash]` on a CUDA machine enables it"
    else:
        if torch.cuda.is_available():
            return "flash_attention_2"
        reason = "flash-attn needs a CUDA GPU and none is available"
    from llava.model.varlen_attention import varlen_kernel

    if torch.cuda.is_available() and varlen_kernel() is not None:
        choice, how = "torch_varlen", "PyTorch's flash varlen kernel (torch_varlen)"
    else:
        choice, how = "sdpa", "PyTorch SDPA attention (sdpa)"
    if os.environ.get("RANK", "0") == "0":
        print(f"[llava] {reason}: falling back to {how}", flush=True)
    return choice


def main() -> None:
    from llava.utils.collector import collection_paused

    with collection_paused():  # the libraries' imports: a million objects, no garbage (llava.utils.collector)
        from llava.train.preemption import exit_on_interrupt
        from llava.train.train import train

    exit_on_interrupt(train, attn_implementation=pick_attn_implementation())  # 143 / 130 on SIGTERM / SIGINT


if __name__ == "__main__":
    main()
