"""Tiny end-to-end demo (smoke version): build tiny models and run one forward pass."""

import argparse
import tempfile
import time

import torch


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=None, help="where to write the tiny models (default: a temp dir)")
    args = ap.parse_args(argv)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llava.testing.tiny import make_tiny_kit

    t0 = time.time()
    root = args.out or tempfile.mkdtemp(prefix="llava-demo-")
    kit = make_tiny_kit(root)
    tok = AutoTokenizer.from_pretrained(kit.llm)
    lm = AutoModelForCausalLM.from_pretrained(kit.llm)
    ids = tok("USER: What is in the picture? ASSISTANT:", return_tensors="pt").input_ids
    with torch.no_grad():
        loss = lm(input_ids=ids, labels=ids).loss
    print(f"tiny models in {root}; forward pass loss {loss.item():.3f}; {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
