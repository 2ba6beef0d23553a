"""Peak memory and time of the causal-LM loss with and without `--loss_chunk_tokens` (issue 21).

    .venv/bin/python bench/bench_chunked_loss.py [--batch 4 --length 2048 --width 256 --vocab 32000]

Each variant runs in a process of its own (its peak resident memory, `ru_maxrss`, is its own): the
decoder's last states [batch, length, width] (requiring grad) through a `width x vocab` head into the
loss, forward and backward, `--labelled` of the positions carrying a label (LLaVA's answers; the
rest are image, system and question tokens). "whole" is transformers' path (ForCausalLMLoss on all the
logits, as LlamaForCausalLM computes them); "chunked N" is llava.model.chunked_loss. Prints each
variant's peak memory above the inputs', its time (median of `--repeats`), the loss, and the ratios.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def child(args) -> dict:
    import torch
    from transformers.loss.loss_utils import ForCausalLMLoss

    from llava.model.chunked_loss import chunked_causal_lm_loss

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)  # the head's initialisation: the same in every variant's process
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(args.batch, args.length, args.width, generator=g, requires_grad=True)
    head = torch.nn.Linear(args.width, args.vocab, bias=False)
    labels = torch.randint(0, args.vocab, (args.batch, args.length), generator=g)
    labels[torch.rand(args.batch, args.length, generator=g) >= args.labelled] = -100
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times, loss = [], None
    for _ in range(args.repeats):
        hidden.grad = None
        head.weight.grad = None
        t = time.perf_counter()
        if args.chunk:
            loss = chunked_causal_lm_loss(hidden, head, labels, args.chunk)
        else:
            loss = ForCausalLMLoss(head(hidden), labels, args.vocab)
        loss.backward()
        times.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_mib": (peak - base) / 1024, "seconds": statistics.median(times), "loss": loss.item()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--length", type=int, default=2048)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--labelled", type=float, default=0.3, help="fraction of positions with a label")
    p.add_argument("--chunks", default="4096,1024", help="chunk sizes to measure (labelled tokens)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--chunk", type=int, default=0, help=argparse.SUPPRESS)  # (the child's variant)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return
    shared = [
        f"--{k}={getattr(args, k)}"
        for k in ("batch", "length", "width", "vocab", "labelled", "repeats", "threads")
    ]
    results = {}
    for chunk in [0, *(int(c) for c in args.chunks.split(","))]:
        out = subprocess.run(
            [sys.executable, __file__, "--child", f"--chunk={chunk}", *shared],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        results[chunk] = json.loads(out.stdout.strip().splitlines()[-1])
    whole = results[0]
    print(f"batch {args.batch} x {args.length} tokens, width {args.width}, vocab {args.vocab}, "
          f"{args.labelled:.0%} labelled, {args.threads} thread(s)")  # fmt: skip
    print("| loss | peak MiB above the inputs | vs whole | s forward + backward | vs whole | loss value |")
    print("| --- | --- | --- | --- | --- | --- |")
    for chunk, r in results.items():
        name = "whole logits (transformers)" if chunk == 0 else f"chunked {chunk}"
        print(f"| {name} | {r['peak_mib']:.0f} | {r['peak_mib'] / whole['peak_mib']:.2f}x | {r['seconds']:.2f} | "
              f"{r['seconds'] / whole['seconds']:.2f}x | {r['loss']:.6f} |")  # fmt: skip


if __name__ == "__main__":
    main()
