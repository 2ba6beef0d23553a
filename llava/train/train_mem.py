"""Training entry with memory-efficient attention: flash-attention 2 when available, else PyTorch SDPA."""

from __future__ import annotations

import os


def pick_attn_implementation() -> str:
    """ "flash_attention_2" when flash-attn imports and a CUDA GPU is present, else "sdpa" (with a message)."""
    import torch

    try:
        import flash_attn  # noqa: F401
    except ImportError as e:
        reason = f"flash-attn is not installed ({e}); `pip install -e .[flash]` on a CUDA machine enables it"
    else:
        if torch.cuda.is_available():
            return "flash_attention_2"
        reason = "flash-attn needs a CUDA GPU and none is available"
    if os.environ.get("RANK", "0") == "0":
        print(f"[llava] {reason}: falling back to PyTorch SDPA attention (sdpa)", flush=True)
    return "sdpa"


def main() -> None:
    from llava.train.train import train

    train(attn_implementation=pick_attn_implementation())


if __name__ == "__main__":
    main()
