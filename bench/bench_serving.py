"""Total tokens/s of one model worker at 1, 4, 8 and 16 concurrent requests (issue 20: batching).

    .venv/bin/python bench/bench_serving.py                    # a worker process over HTTP on 127.0.0.1
    .venv/bin/python bench/bench_serving.py --in-process       # the worker's runner in this process
    .venv/bin/python bench/bench_serving.py --in-process --join batch   # static batching, to compare

The model is a real tiny LLaVA-1.5 checkpoint (llava.testing.tiny: LLaMA LM, CLIP tower, MLP projector,
the LLaMA-2 tokenizer), built in a temporary folder as the serving tests build theirs; nothing is
downloaded. By default one `python -m llava.serve.model_worker --no-register` process serves it on a free
loopback port with `--limit-model-concurrency` (the batch capacity) 16; the clients are threads of this
process, each sending its next request as soon as its previous answer ends (closed loop), every request
an image and a question (answers of 0.5 to 1.5 x `--max-new-tokens` tokens, no stop string: they run to
their length unless the model writes EOS; a batch's rows end at different steps, as real answers do).
Tokens are the worker's own counts (`usage.completion_tokens`).

At concurrency c each client sends `--requests-per-client` requests (10: c x 10 requests in all, so
that the drain at the end, when fewer than c run, stays a small part of the level's time). The levels
are interleaved over `--rounds` rounds (the machine may be shared), "one at a time" being concurrency 1
in the same round; a ratio is the median over the rounds of that round's ratio. The last line is
`total tokens/s at 8 concurrent / one at a time: R`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LEVELS = (1, 4, 8, 16)


def build_checkpoint(root: Path) -> Path:
    from llava.testing.tiny import make_tiny_kit, save_tiny_llava

    kit = make_tiny_kit(root / "kit")
    return save_tiny_llava(kit, root / "llava-v1.5-tiny")


def request_bodies(n: int, max_new_tokens: int) -> list[dict]:
    """`n` different requests: a picture each (its own colours and size), a question about it, and
    answers of 0.5, 0.75, 1, 1.25 and 1.5 x `max_new_tokens` tokens in turn (their mean)."""
    from PIL import Image

    from llava.conversation import get_conv_template
    from llava.serve.images import encode_image_base64

    bodies = []
    for i in range(n):
        img = Image.new("RGB", (48 + 5 * (i % 7), 36 + 3 * (i % 5)), ((37 * i) % 256, 120, (91 * i) % 256))
        conv = get_conv_template("llava_v1")
        conv.append_message(conv.roles[0], f"<image>\nWhat is in picture number {i}?")
        conv.append_message(conv.roles[1], None)
        bodies.append({"prompt": conv.get_prompt(), "images": [encode_image_base64(img)], "temperature": 0,
                       "max_new_tokens": max_new_tokens * (2 + i % 5) // 4, "stop": []})  # fmt: skip
    return bodies


class HttpWorker:
    """One model worker process on a loopback port; `send` streams a request and returns its last chunk."""

    def __init__(self, checkpoint: Path, capacity: int, log_dir: Path, threads: int):
        from llava.serve.processes import ServiceProcess, free_port

        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        args = ["--host", "127.0.0.1", "--port", str(port), "--worker-address", self.url, "--no-register",
                "--model-path", str(checkpoint), "--limit-model-concurrency", str(capacity)]  # fmt: skip
        env = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "LLAVA_LOGDIR": str(log_dir),
               "OMP_NUM_THREADS": str(threads)}  # fmt: skip
        self.proc = ServiceProcess.start(
            "worker", "llava.serve.model_worker", args, self.url, log_dir, env=env
        )
        self.proc.wait_ready("/worker_get_status", timeout=300)
        self.sessions = threading.local()  # one kept-alive connection per client, as the controller's pool

    def send(self, body: dict) -> dict:
        import requests

        from llava.serve import protocol

        session = getattr(self.sessions, "session", None)
        if session is None:
            session = self.sessions.session = requests.Session()
        url = self.url + "/worker_generate_stream"
        with session.post(url, json=body, stream=True, timeout=600) as r:
            *_, last = protocol.iter_chunks(r.iter_content(chunk_size=None))
        return last

    def close(self) -> None:
        self.proc.stop()


class InProcessWorker:
    """The worker's runner in this process: what `/worker_generate_stream` calls, without HTTP."""

    def __init__(self, checkpoint: Path, capacity: int, join: str):
        from llava.model.builder import load_pretrained_model
        from llava.serve.inference import ModelRunner

        tok, model, proc, ctx = load_pretrained_model(str(checkpoint), None, device="cpu")
        self.runner = ModelRunner(tok, model, proc, ctx, checkpoint.name, conv_template="llava_v1",
                                  max_batch=capacity, batch_join=join)  # fmt: skip

    def send(self, body: dict) -> dict:
        *_, last = self.runner.stream(self.runner.prepare(body))
        return last

    def close(self) -> None:
        self.runner.close()


def run_level(worker, bodies: list[dict], concurrency: int) -> dict:
    """Send all `bodies` from `concurrency` client threads (closed loop); tokens, seconds, latencies."""
    pending = iter(range(len(bodies)))
    lock = threading.Lock()
    tokens, latencies, errors = [], [], []

    def client():
        while True:
            with lock:
                i = next(pending, None)
            if i is None:
                return
            t0 = time.perf_counter()
            last = worker.send(bodies[i])
            with lock:
                latencies.append(time.perf_counter() - t0)
                if last.get("error_code"):
                    errors.append(last["text"])
                else:
                    tokens.append(last["usage"]["completion_tokens"])

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} request(s) failed at concurrency {concurrency}: {errors[0]}")
    return {"tokens": sum(tokens), "seconds": seconds, "tps": sum(tokens) / seconds,
            "p50": statistics.median(latencies)}  # fmt: skip


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--in-process", action="store_true", help="the runner in this process instead of HTTP")
    p.add_argument("--join", choices=["step", "batch"], default="step",
                   help="with --in-process: join at every token step (continuous) or only into an empty batch")  # fmt: skip
    p.add_argument("--requests-per-client", type=int, default=10, help="requests each client sends per level")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads of the worker (1, as the serving tests run workers: on a shared 2-core "
                   "machine, 2 threads wait for each other at every operation)")  # fmt: skip
    p.add_argument("--capacity", type=int, default=max(LEVELS), help="--limit-model-concurrency (batch rows)")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.join != "step" and not args.in_process:
        p.error("--join batch needs --in-process (the worker process always joins at every step)")

    import torch

    torch.set_num_threads(args.threads)  # the in-process worker's (the client threads do no tensor work)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = build_checkpoint(Path(tmp))
        mode = f"in-process (join={args.join})" if args.in_process else "worker process over HTTP"
        print(f"{mode}; capacity {args.capacity}; {args.requests_per_client} requests x ~{args.max_new_tokens} tokens per client and level; "
              f"{args.rounds} rounds; torch {torch.__version__}, {os.cpu_count()} CPUs, {args.threads} torch thread(s)")  # fmt: skip
        if args.in_process:
            worker = InProcessWorker(checkpoint, args.capacity, args.join)
        else:
            worker = HttpWorker(checkpoint, args.capacity, Path(tmp) / "logs", args.threads)
        try:
            bodies = request_bodies(args.requests_per_client * max(LEVELS), args.max_new_tokens)
            run_level(worker, bodies[:4], 4)  # warm-up
            results: dict[int, list[dict]] = {c: [] for c in LEVELS}
            for r in range(args.rounds):
                for c in LEVELS:
                    res = run_level(worker, bodies[: args.requests_per_client * c], c)
                    results[c].append(res)
                    print(f"  round {r + 1}, {c:2d} concurrent: {res['tokens']} tokens in {res['seconds']:.2f}s "
                          f"= {res['tps']:.0f} tokens/s")  # fmt: skip
        finally:
            worker.close()
    print_table(results)


def print_table(results: dict[int, list[dict]]) -> None:
    """One row per level; "vs one at a time" is the median over rounds of that round's ratio (paired in
    time, so that a load on the machine that comes and goes cancels out)."""

    def ratio(c: int) -> float:
        return statistics.median(x["tps"] / one["tps"] for x, one in zip(results[c], results[1]))

    print(
        "\n| concurrent requests | total tokens/s per round | median | vs one at a time | median latency s |"
    )
    print("| --- | --- | --- | --- | --- |")
    for c in LEVELS:
        rounds = ", ".join(f"{x['tps']:.0f}" for x in results[c])
        tps = statistics.median(x["tps"] for x in results[c])
        p50 = statistics.median(x["p50"] for x in results[c])
        label = "1 (one at a time)" if c == 1 else str(c)
        print(f"| {label} | {rounds} | {tps:.0f} | {ratio(c):.2f}x | {p50:.2f} |")
    print(f"\ntotal tokens/s at 8 concurrent / one at a time: {ratio(8):.2f}")


if __name__ == "__main__":
    main()
