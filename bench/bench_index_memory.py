"""Memory of the per-sample index of a 1M-sample mix665k-like JSON file, and whether DataLoader workers
share it: json.load's list of dicts (what the original LLaVA holds) against llava's JsonSource and the
dataset's numpy index.

    .venv/bin/python bench/bench_index_memory.py [--samples 1000000] [--workers 0 2 4] [--limit-gib 12]
    .venv/bin/python bench/bench_index_memory.py --samples 20000      # quick (~1 min)

Data: `--samples` samples written to a temporary folder as one JSON list (about 0.6 KB each: 0.6 GB for
1M): ids, COCO/GQA/OCR-VQA/VG-like image names, 1-3 rounds (2-6 turns) with `<image>` first, 7%
text-only ShareGPT-like chats, 1% of the samples with non-ASCII text (written as UTF-8, not escaped,
which makes every decoding window of the scan non-ASCII).

Each measurement runs in a fresh Python process (torch imported first):
- baseline: `json.load` of the file into a list; the dataset's `__getitem__` touches sample i as the
  original's does before tokenising (its conversations' values, its `image`).
- ours: `llava.data.sources.JsonSource` (the file's bytes + an offsets array) under a `SampleView`, with
  the per-sample arrays `LazySupervisedDataset.prepare()` leaves (has-visuals, text lengths, token rows,
  visual token costs as a `RaggedInts`), filled here from one pass over the samples instead of
  tokenising; `__getitem__` parses sample i and reads its entries of every array.
Then a torch DataLoader (batch 64, persistent workers, fork) iterates one epoch in a seeded random
order (the trainer's first epoch). Reported from /proc/<pid>/smaps_rollup: the main process's PSS and
USS (Private_Clean + Private_Dirty) after opening, against the same process before it ("index" =
the growth); the peak RSS growth while opening (VmHWM); each worker's private growth between its start
and the end of the epoch (the pages it copied on access); and the total PSS of main + workers after
the epoch. A guard in this process stops a measurement whose processes together pass `--limit-gib` of
PSS (the row then says so).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

MIB = 1 << 20
UNICODE_TEXT = ["Qu'est-ce que c'est ? Un café.", "这是什么？一只猫。", "Что это? Собака.", "What is it? 🙂"]


def _sample(i: int, rng: random.Random, vocab) -> dict:
    """One mix665k-like sample, shorter than bench_validate's (which imitates the real 1.5 KB mean)."""
    from bench_validate import SHORT_Q, _text

    kind = rng.choices(["vqa", "conv", "detail", "sharegpt"], [60, 25, 8, 7])[0]
    rounds = rng.randint(1, 3)
    if kind == "vqa":
        turns = [
            t for _ in range(rounds) for t in (_text(rng, vocab, 7) + "\n" + SHORT_Q, _text(rng, vocab, 2))
        ]
    elif kind == "conv":
        turns = [
            t for _ in range(rounds) for t in (_text(rng, vocab, 10), _text(rng, vocab, rng.randint(10, 40)))
        ]
    elif kind == "detail":
        turns = [_text(rng, vocab, 10), _text(rng, vocab, rng.randint(40, 90))]
    else:
        turns = [
            t for _ in range(rounds) for t in (_text(rng, vocab, 15), _text(rng, vocab, rng.randint(20, 60)))
        ]
    if rng.random() < 0.01:
        turns[-1] += " " + rng.choice(UNICODE_TEXT)
    conversations = [{"from": "human" if j % 2 == 0 else "gpt", "value": v} for j, v in enumerate(turns)]
    folder = rng.choice(
        ["coco/train2017", "gqa/images", "ocr_vqa/images", "textvqa/train_images", "vg/VG_100K"]
    )
    sample = {"id": f"{i:012d}", "conversations": conversations}
    if kind != "sharegpt":
        sample["image"] = f"{folder}/{i:012d}.jpg"
        conversations[0]["value"] = "<image>\n" + conversations[0]["value"]
    return sample


def make_data(path: Path, n: int, seed: int = 0) -> Path:
    """Write `n` samples to `path` as one JSON list, a chunk at a time (never all in memory)."""
    from bench_validate import _vocabulary

    rng = random.Random(seed)
    words, weights = _vocabulary(rng, size=20_000)
    vocab = (words, list(itertools.accumulate(weights)))
    with open(path, "w", encoding="utf-8") as f:
        f.write("[\n")
        for start in range(0, n, 10_000):
            chunk = (_sample(i, rng, vocab) for i in range(start, min(n, start + 10_000)))
            sep = ",\n" if start else ""
            f.write(sep + ",\n".join(json.dumps(s, ensure_ascii=False) for s in chunk))
        f.write("\n]\n")
    return path


# ------------------------------------------------------------------------------ measured in a child process
def smaps(pid: int | str = "self") -> dict[str, int]:
    """Bytes of /proc/<pid>/smaps_rollup: Rss, Pss, uss (Private_Clean + Private_Dirty)."""
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                fields[parts[0].rstrip(":")] = int(parts[1]) * 1024
    fields["uss"] = fields["Private_Clean"] + fields["Private_Dirty"]
    return fields


def reset_peak_rss() -> None:
    """Start VmHWM afresh from the current RSS (Linux: 5 > /proc/self/clear_refs)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss() -> int:
    """This process's peak RSS since `reset_peak_rss` (VmHWM), in bytes."""
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def open_data(mode: str, path: str):
    """The samples `mode`'s way: json.load's list (baseline) or llava's JsonSource (ours)."""
    if mode == "baseline":
        with open(path) as f:
            return json.load(f)
    from llava.data.sources import JsonSource

    return JsonSource(path)


class ListDataset:
    """The original's way: json.load's list; an item touches what its __getitem__ reads first."""

    def __init__(self, samples: list[dict]):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> int:
        sample = self.samples[i]
        return sum(len(t["value"]) for t in sample["conversations"]) + ("image" in sample)


class IndexedDataset:
    """Ours: a SampleView over JsonSource and the per-sample arrays LazySupervisedDataset.prepare()
    leaves (filled from one pass over the samples, without tokenising); an item reads all of them."""

    def __init__(self, source):
        import numpy as np

        from llava.data.dataset import RaggedInts, SampleView

        self.view = SampleView(source)
        visual = np.fromiter(("image" in s for s in self.view), dtype=bool, count=len(self.view))
        self.has_visuals = visual
        self.text_lengths = np.random.default_rng(0).integers(20, 400, len(visual), dtype=np.int64)
        self.token_rows = np.arange(len(visual), dtype=np.int64)
        self.visual_tokens = RaggedInts.from_lists([[576] if v else [] for v in visual.tolist()])

    def __len__(self) -> int:
        return len(self.view)

    def __getitem__(self, i: int) -> int:
        sample = self.view[i]
        _ = (
            bool(self.has_visuals[i]),
            int(self.text_lengths[i]),
            int(self.token_rows[i]),
            self.visual_tokens[i],
        )
        return sum(len(t["value"]) for t in sample["conversations"]) + (
            "image" in sample
        )  # as the baseline's


def _note_worker(worker_id: int) -> None:
    """Record a worker's pid and its private memory at its start (the growth is measured from it)."""
    folder = os.environ["BENCH_PIDS"]
    Path(folder, str(os.getpid())).write_text(str(smaps()["uss"]))


def _add(batch):
    return sum(batch)


def child(mode: str, path: str, workers: int, epochs: int) -> dict:
    """Open the data `mode`'s way, iterate `epochs` shuffled epochs with `workers` workers; the figures."""
    import gc

    import torch
    from torch.utils.data import DataLoader

    gc.collect()
    reset_peak_rss()
    before = smaps()
    start = time.perf_counter()
    data = open_data(mode, path)
    open_s, hwm = time.perf_counter() - start, peak_rss()
    dataset = ListDataset(data) if mode == "baseline" else IndexedDataset(data)
    del data
    after_open = smaps()
    pids = Path(os.environ["BENCH_PIDS"])
    loader = DataLoader(
        dataset, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0), num_workers=workers,
        collate_fn=_add, persistent_workers=workers > 0, worker_init_fn=_note_worker,
        multiprocessing_context="fork" if workers else None,
    )  # fmt: skip
    start, total = time.perf_counter(), 0
    for _ in range(epochs):
        for batch in loader:
            total += batch
    iterate_s = time.perf_counter() - start
    main_end = smaps()
    worker_rows = []
    for f in sorted(pids.iterdir()):
        at_start = int(f.read_text())
        now = smaps(f.name)
        worker_rows.append({"pid": int(f.name), "growth": now["uss"] - at_start, "pss": now["Pss"]})
    del loader
    return {
        "mode": mode, "workers": workers, "samples": len(dataset), "open_s": open_s, "iterate_s": iterate_s,
        "checksum": total,
        "index_uss": after_open["uss"] - before["uss"], "index_pss": after_open["Pss"] - before["Pss"],
        "main_uss": after_open["uss"], "main_pss": after_open["Pss"], "open_peak": hwm - before["Rss"],
"main_growth": main_end["uss"] - after_open["uss"],
        "workers_growth": [w["growth"] for w in worker_rows], "total_pss": main_end["Pss"] + sum(
            w["pss"] for w in worker_rows
        ),
    }  # fmt: skip


# ------------------------------------------------------------------------------ the parent: runs and guards
def _tree_pss(pid: int) -> int:
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += smaps(p.pid)["Pss"]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            pass
    return total


def measure(mode: str, path: Path, workers: int, epochs: int, limit: int) -> dict:
    """One measurement in a fresh process, stopped if its processes pass `limit` bytes of PSS together."""
    with tempfile.TemporaryDirectory() as pids:
        env = dict(os.environ, BENCH_PIDS=pids, OMP_NUM_THREADS="1")
        cmd = [sys.executable, __file__, "--child", mode, "--path", str(path), "--workers", str(workers),
               "--epochs", str(epochs)]  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
        peak = 0
        while proc.poll() is None:
            pss = _tree_pss(proc.pid)
            peak = max(peak, pss)
            if pss > limit:
                import psutil

                for p in psutil.Process(proc.pid).children(recursive=True):
                    p.kill()
                proc.kill()
                proc.wait()
                return {"mode": mode, "workers": workers, "stopped": pss, "peak_seen": peak}
            time.sleep(0.2)
        out = proc.stdout.read()
        if proc.returncode:
            raise RuntimeError(
                f"{mode} with {workers} workers failed (exit {proc.returncode}): {out[-2000:]}"
            )
        result = json.loads(out.strip().splitlines()[-1])
        result["peak_seen"] = peak
        return result


def _mib(n: float) -> str:
    return f"{n / MIB:,.0f}"


def _ratio(r: dict, b: dict | None, key: str) -> str:
    """' (0.25x)': `r`'s figure against the baseline's `b`; '' for the baseline itself."""
    return "" if b is None or r is b else f" ({r[key] / max(b[key], 1e-9):.2f}x)"


def table(results: list[dict]) -> str:
    base = {r["workers"]: r for r in results if r["mode"] == "baseline" and "stopped" not in r}
    lines = [
        "| data | workers | open s | peak RSS growth while opening, MiB | index USS, MiB | main PSS after open, MiB "
        "| each worker's private growth, MiB | main+workers PSS after the epoch, MiB | epoch s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        name = "json.load list (baseline)" if r["mode"] == "baseline" else "JsonSource + numpy index (ours)"
        if "stopped" in r:
            lines.append(
                f"| {name} | {r['workers']} | stopped: PSS passed the limit at {_mib(r['stopped'])} MiB |"
            )
            continue
        ratio = functools.partial(_ratio, r, base.get(r["workers"]))
        growth = ", ".join(_mib(g) for g in r["workers_growth"]) or f"(main: {_mib(r['main_growth'])})"
        lines.append(
            f"| {name} | {r['workers']} | {r['open_s']:.1f}{ratio('open_s')} | {_mib(r['open_peak'])}"
            f"{ratio('open_peak')} | {_mib(r['index_uss'])}{ratio('index_uss')} | {_mib(r['main_pss'])} | {growth} "
            f"| {_mib(r['total_pss'])}{ratio('total_pss')} | {r['iterate_s']:.1f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4])
    parser.add_argument("--epochs", type=int, default=1, help="shuffled epochs each measurement iterates")
    parser.add_argument(
        "--limit-gib", type=float, default=12.0, help="stop a measurement past this total PSS"
    )
    parser.add_argument("--data", help="use this JSON file instead of writing one (kept)")
    parser.add_argument("--child", choices=["baseline", "ours"], help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.path, args.workers[0], args.epochs)))
        return
    print(f"cpus: {os.cpu_count()}, load average before: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.data) if args.data else Path(tmp) / "mix.json"
        if not args.data:
            start = time.perf_counter()
            make_data(path, args.samples)
            print(
                f"wrote {args.samples:,} samples ({path.stat().st_size / 1e6:,.0f} MB) in {time.perf_counter() - start:.0f}s"
            )
        results = []
        for workers in args.workers:
            for mode in ("baseline", "ours"):
                r = measure(mode, path, workers, args.epochs, int(args.limit_gib * (1 << 30)))
                results.append(r)
                print(json.dumps(r), flush=True)
        checks = {r["workers"]: set() for r in results}
        for r in results:
            if "checksum" in r:
                checks[r["workers"]].add(r["checksum"])
        assert all(len(c) <= 1 for c in checks.values()), f"the two ways read different samples: {checks}"
        print()
        print(table(results))
    print(f"load average after: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
