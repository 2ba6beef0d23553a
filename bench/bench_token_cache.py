"""The token cache: llava's own token store (llava.data.length_cache) vs `datasets`' fingerprinted map.

    .venv/bin/python bench/bench_token_cache.py [--samples 50000] [--reads 10000] [--num-proc 2]

Both turn a mix665k-like JSON file (bench_validate.make_data: multi-turn LLaVA-Instruct, VQA,
region and text-only ShareGPT samples) into every sample's input ids and labels with the same
`SampleFormat.tokenize` (template v1, `model_max_length` 2048, 576 tokens per image, the LLaMA-2
tokenizer of tests/fixtures/tokenizers, byte-identical to /work/shared/data/tokenizers/llama2):

- `ours`: `load_samples` + `length_cache.load_or_build` (a flagged uint16 token file, memory-mapped,
  and a lengths/offsets JSON), read with `TokenStore.get`;
- `datasets`: `Dataset.from_json(...).map(fn, batched=True, num_proc=N, remove_columns=...)`, `fn`
  storing `input_ids` / `labels` as int32 lists (plus `length`, `error`: what our JSON holds), read
  as torch tensors through `with_format("torch")`;
- `datasets_flagged`: the same map storing our flagged uint16 encoding (`token_store.encode`),
  read with `token_store.decode`: the fairest port of our file format onto Arrow.

Every figure comes from a fresh process (`--child`): the cold build (caches deleted; both sides
with `--num-proc` processes), the warm open (the same run again: a cache hit; best of
`--repeats`), the disk size, `--reads` random reads as (ids, labels) LongTensors (µs per item)
and the main process's PSS after opening. The reads of every method must be identical (a digest
is compared). Imports and the tokenizer load are not timed (training does them either way).

Then the invalidation check (`--invalidation-samples`, a copy of llava/ in a temporary folder):
after a first build, one thing changes at a time (template, tokenizer, the data file, the
template strings, the rendering code, the label code) and each method runs again; its tokens
are compared with a fresh tokenisation by the changed code ("stale" when they differ).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOKENIZERS = REPO / "tests" / "fixtures" / "tokenizers"
METHODS = ("ours", "datasets", "datasets_flagged")
MAX_LENGTH, IMAGE_TOKENS = 2048, 576


# --------------------------------------------------------------------------- the two caches (child side)
class DatasetsEncoder:
    """The `map` function: each row of a batch tokenised by `encode_sample` (`SampleFormat.tokenize`,
    as our cache does). Arrow gives every row every column, so absent keys come back as None and
    are dropped first (`"image": None` would count as an image)."""

    def __init__(self, tokenizer, fmt, flagged: bool):
        self.tokenizer, self.fmt, self.flagged = tokenizer, fmt, flagged

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        from llava.constants import IGNORE_INDEX
        from llava.data.length_cache import encode_sample
        from llava.data.token_store import encode

        out = {k: [] for k in (("tokens",) if self.flagged else ("input_ids", "labels"))}
        out.update(length=[], error=[])
        for values in zip(*batch.values()):
            sample = {k: v for k, v in zip(batch, values) if v is not None}
            enc = encode_sample(sample, self.tokenizer, self.fmt)
            ids = enc.ids if enc.error is None else np.zeros(0, np.int32)
            targets = enc.targets if enc.error is None else np.zeros(0, bool)
            if self.flagged:
                out["tokens"].append(encode(ids, targets, np.uint16))
            else:
                out["input_ids"].append(ids)
                out["labels"].append(np.where(targets, ids, IGNORE_INDEX).astype(np.int32))
            out["length"].append(enc.count)
            out["error"].append(enc.error)
        return out


class OursCache:
    """`load_samples` + `load_or_build`, as `LazySupervisedDataset.prepare` calls it."""

    def __init__(self, data: Path, tokenizer, fmt, root: Path, num_proc: int):
        import functools

        from llava.data import length_cache
        from llava.data.dataset import load_samples

        # the pool size, as datasets' num_proc (count_all defaults to the machine's core count)
        length_cache.count_all = functools.partial(length_cache.count_all, num_workers=num_proc)
        self.steps = Steps()
        self.samples = self.steps.run("data", lambda: load_samples(data))
        self.cache = self.steps.run(
            "tokens",
            lambda: length_cache.load_or_build(data, self.samples, tokenizer, fmt, cache_dir=root / "ours"),
        )

    def __len__(self) -> int:
        return len(self.cache.tokens)

    def get(self, k: int):
        return self.cache.tokens.get(k)

    def disk(self) -> dict:
        tokens = Path(self.cache.tokens.path)
        lengths = tokens.with_name(tokens.name.replace(".tokens.npy", ".lengths.json"))
        return {"tokens": tokens.stat().st_size + lengths.stat().st_size, "data copy": 0}


class DatasetsCache:
    """`Dataset.from_json(...).map(DatasetsEncoder)`: datasets' own caching of both steps."""

    def __init__(self, data: Path, tokenizer, fmt, num_proc: int, flagged: bool):
        import numpy as np
        from datasets import Dataset, Features, Sequence, Value

        self.flagged = flagged
        self.steps = Steps()
        self.raw = self.steps.run("data", lambda: Dataset.from_json(str(data)))
        columns = {"tokens": Sequence(Value("uint16"))} if flagged else {
            "input_ids": Sequence(Value("int32")), "labels": Sequence(Value("int32"))}  # fmt: skip
        features = Features(dict(columns, length=Value("int32"), error=Value("string")))
        encoder = DatasetsEncoder(tokenizer, fmt.for_tokens(), flagged)
        columns = self.raw.column_names
        self.tokens = self.steps.run(
            "tokens",
            lambda: self.raw.map(
                encoder, batched=True, num_proc=num_proc, remove_columns=columns, features=features
            ),
        )
        if flagged:
            # numpy's formatter casts integers to int64 unless told the dtype (decode reads the flag bit)
            self.view = self.tokens.with_format("numpy", columns=["tokens"], dtype=np.uint16)
        else:
            self.view = self.tokens.with_format("torch", columns=["input_ids", "labels"])

    def __len__(self) -> int:
        return len(self.tokens)

    def get(self, k: int):
        from llava.data.token_store import decode

        row = self.view[k]
        if self.flagged:
            return decode(row["tokens"])
        return row["input_ids"].long(), row["labels"].long()

    def disk(self) -> dict:
        def size(ds):
            return sum(os.path.getsize(f["filename"]) for f in ds.cache_files)

        return {"tokens": size(self.tokens), "data copy": size(self.raw)}


class Steps:
    """Wall time and PSS after each step of an open: the data (samples / Arrow table), then the tokens."""

    def __init__(self):
        self.wall: dict[str, float] = {}
        self.pss: dict[str, float] = {}

    def run(self, name: str, fn):
        start = time.perf_counter()
        result = fn()
        self.wall[name], self.pss[name] = time.perf_counter() - start, pss_mb()
        return result


def pss_mb() -> float:
    """Proportional set size of this process (shared pages split between their users), in MB."""
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no Pss line in /proc/self/smaps_rollup")


def digest(items) -> str:
    """One hash of (ids, labels) tensor pairs: equal tokens in both caches, or not."""
    h = hashlib.sha256()
    for ids, labels in items:
        h.update(ids.numpy().tobytes())
        h.update(labels.numpy().tobytes())
    return h.hexdigest()[:16]


def cache_files(root: Path) -> set[str]:
    """The cache's data files under `root` (lock and temporary files aside)."""
    return {
        str(p) for p in root.rglob("*") if p.suffix in (".arrow", ".npy") or p.name.endswith(".lengths.json")
    }


def child(spec: dict) -> dict:
    """One run in this (fresh) process: open (building on a miss), read, measure."""
    if spec.get("code"):
        sys.path.insert(0, spec["code"])
    os.environ["HF_DATASETS_CACHE"] = spec["hf_cache"]
    import datasets  # noqa: F401  (imported by both: training imports it for its data sources)
    import torch  # noqa: F401
    from transformers import AutoTokenizer

    import llava
    from llava.data.sample_format import SampleFormat

    if spec.get("code") and not llava.__file__.startswith(spec["code"]):
        raise RuntimeError(f"llava imported from {llava.__file__}, not from the copy in {spec['code']}")
    datasets.disable_progress_bars()
    sys.path.insert(1, str(REPO / "bench"))
    from bench_validate import _timed

    root, data = Path(spec["root"]), Path(spec["data"])
    tokenizer = AutoTokenizer.from_pretrained(spec["tokenizer"])
    fmt = SampleFormat(spec["template"], MAX_LENGTH, is_multimodal=True, num_image_tokens=IMAGE_TOKENS)
    before, pss_base = cache_files(root), pss_mb()
    if spec["method"] == "ours":
        opener = lambda: OursCache(data, tokenizer, fmt, root, spec["num_proc"])  # noqa: E731
    else:
        flagged = spec["method"] == "datasets_flagged"
        opener = lambda: DatasetsCache(data, tokenizer, fmt, spec["num_proc"], flagged)  # noqa: E731
    cache, wall, cpu = _timed(opener)
    pss_open = pss_mb()
    n = len(cache)
    indices = random.Random(0).sample(range(n), min(spec["reads"], n))
    start = time.perf_counter()
    for k in indices:  # nothing kept: the PSS after the reads counts the pages the reads touched
        cache.get(k)
    read_us = (time.perf_counter() - start) / max(1, len(indices)) * 1e6
    pss_read = pss_mb()
    result = {
        "wall": wall, "cpu": cpu, "read_us": read_us, "pss_base": pss_base, "pss_open": pss_open,
        "pss_read": pss_read, "disk": cache.disk(), "digest": digest(cache.get(k) for k in indices), "n": n,
        "built": bool(cache_files(root) - before), "steps": cache.steps.wall, "steps_pss": cache.steps.pss,
    }  # fmt: skip
    if spec.get("expect"):  # what the (possibly changed) code gives now, without any cache
        from llava.data.dataset import load_samples
        from llava.data.length_cache import encode_sample

        samples = load_samples(data)
        result["expected"] = digest(_pair(encode_sample(samples[k], tokenizer, fmt)) for k in indices)
    return result


def _pair(enc):
    import numpy as np
    import torch

    from llava.constants import IGNORE_INDEX

    if enc.error is not None:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    ids = torch.from_numpy(enc.ids.astype(np.int64))
    return ids, torch.where(torch.from_numpy(enc.targets), ids, torch.tensor(IGNORE_INDEX))


# --------------------------------------------------------------------------- the parent
def run_child(**spec) -> dict:
    """`child(spec)` in a fresh interpreter; its JSON result."""
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True, env=env
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"{spec['method']} run failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")


def measure(args, data: Path, work: Path) -> dict[str, dict]:
    """Cold and warm figures of each method, each in its own cache folders. The methods take turns
    (round r of every method, then round r + 1), so a change in the machine's load hits them alike;
    each figure is the best of its rounds."""
    methods = args.methods.split(",")
    runs = {m: {"cold": [], "warm": []} for m in methods}
    for round_ in range(args.repeats):
        for method in methods:
            root = work / f"cache_{method}"
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            common = dict(method=method, root=str(root), hf_cache=str(root / "hf"), data=str(data),
                          tokenizer=str(TOKENIZERS / "llama2"), template="v1", num_proc=args.num_proc,
                          reads=args.reads)  # fmt: skip
            cold, warm = run_child(**common), run_child(**common)
            if not cold["built"] or warm["built"]:
                raise RuntimeError(f"{method}: the cold run must build and the warm run must hit the cache")
            runs[method]["cold"].append(cold)
            runs[method]["warm"].append(warm)
            load = os.getloadavg()[0]
            print(f"  round {round_ + 1}, {method}: cold {cold['wall']:.1f}s ({cold['cpu']:.1f} CPU-s), "
                  f"warm {warm['wall']:.2f}s, read {warm['read_us']:.1f}us, load {load:.1f}")  # fmt: skip
    results = {}
    for method, r in runs.items():
        cold, warm = min(r["cold"], key=lambda x: x["wall"]), min(r["warm"], key=lambda x: x["wall"])
        cold["cpu"] = min(x["cpu"] for x in r["cold"])
        warm["read_us"] = min(x["read_us"] for x in r["cold"] + r["warm"])
        results[method] = {"cold": cold, "warm": warm}
    digests = {m: r["warm"]["digest"] for m, r in results.items()}
    if len(set(digests.values())) != 1:
        raise RuntimeError(f"the methods read different tokens: {digests}")
    return results


def table(results: dict[str, dict]) -> str:
    """The markdown table: figures of each method and its ratio to ours."""
    ours = results.get("ours")
    rows = [
        ("cold build, wall s", lambda r: r["cold"]["wall"], "{:.1f}"),
        ("  of it the data (JSON list / from_json), s", lambda r: r["cold"]["steps"]["data"], "{:.1f}"),
        ("  of it the tokens (load_or_build / map), s", lambda r: r["cold"]["steps"]["tokens"], "{:.1f}"),
        ("cold build, CPU s (all processes; best round)", lambda r: r["cold"]["cpu"], "{:.1f}"),
        ("warm open, wall s", lambda r: r["warm"]["wall"], "{:.2f}"),
        ("  of it the data (JSON list / from_json), s", lambda r: r["warm"]["steps"]["data"], "{:.2f}"),
        ("  of it the tokens (load_or_build / map), s", lambda r: r["warm"]["steps"]["tokens"], "{:.2f}"),
        ("random read, µs per item", lambda r: r["warm"]["read_us"], "{:.1f}"),
        ("disk: tokens, MB", lambda r: r["warm"]["disk"]["tokens"] / 1e6, "{:.1f}"),
        ("disk: + Arrow copy of the data, MB", lambda r: sum(r["warm"]["disk"].values()) / 1e6, "{:.1f}"),
        ("PSS after warm open, MB", lambda r: r["warm"]["pss_open"], "{:.0f}"),
        ("  of it the data (over imports and tokenizer), MB",
         lambda r: r["warm"]["steps_pss"]["data"] - r["warm"]["pss_base"], "{:.0f}"),
        ("  of it the tokens, MB",
         lambda r: r["warm"]["steps_pss"]["tokens"] - r["warm"]["steps_pss"]["data"], "{:.0f}"),
        ("PSS after the reads (pages they touched), MB", lambda r: r["warm"]["pss_read"], "{:.0f}"),
    ]  # fmt: skip
    head = "| | " + " | ".join(results) + " |\n| --- |" + " --- |" * len(results) + "\n"
    lines = []
    for name, get, form in rows:
        cells = []
        for method, r in results.items():
            cell = form.format(get(r))
            if ours is not None and method != "ours" and get(ours):
                cell += f" ({get(r) / get(ours):.2f}x)"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return head + "\n".join(lines)


# --------------------------------------------------------------------------- invalidation
def _edit(path: Path, old: str | None, new: str):
    """Replace `old` by `new` in `path` (append `new` when `old` is None); returns the undo."""
    text = path.read_text()
    if old is not None and old not in text:
        raise RuntimeError(f"{path}: {old!r} not found; the bench's code edit needs updating")
    path.write_text(text + new if old is None else text.replace(old, new, 1))
    return lambda: path.write_text(text)


def _edit_data(path: Path):
    """One sample's answer made longer; the undo restores the bytes and the modification time."""
    st, text = path.stat(), path.read_text()
    samples = json.loads(text)
    samples[0]["conversations"][1]["value"] += " Edited by the benchmark."
    path.write_text(json.dumps(samples))

    def undo():
        path.write_text(text)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))

    return undo


LABEL_EDIT = """
_bench_labels = _labels_from_spans


def _labels_from_spans(enc, spans, sample_id):  # bench edit: the first target token is masked
    labels = _bench_labels(enc, spans, sample_id)
    first = next(i for i, t in enumerate(labels) if t != IGNORE_INDEX)
    labels[first] = IGNORE_INDEX
    return labels
"""

SYSTEM_EDIT = '\nconv_templates["v1"].system = "Hi. " + conv_templates["v1"].system\n'


def _edit_templates(code: Path, data: Path):
    """v1's system prompt changed where the templates are kept as data."""
    old = 'VICUNA_V1_SYSTEM = (\n    "'
    return _edit(code / "llava/conversation_templates.py", old, old + "Hi. ")


def _edit_conversation(code: Path, data: Path):
    """v1's system prompt changed by code in llava/conversation.py."""
    return _edit(code / "llava/conversation.py", None, SYSTEM_EDIT)


def _edit_labels(code: Path, data: Path):
    return _edit(code / "llava/data/preprocess.py", None, LABEL_EDIT)


def _edit_comment(code: Path, data: Path):
    return _edit(code / "llava/data/preprocess.py", None, "\n# a comment\n")


# (what changes, must the tokens change, how: spec overrides or an edit of the copy returning its undo)
SCENARIOS = [
    ("nothing (second run)", False, {}),
    ("--version v1 -> llama_2", True, {"template": "llama_2"}),
    ("tokenizer llama2 -> llama2-legacy", True, {"tokenizer": str(TOKENIZERS / "llama2-legacy")}),
    ("data file: one answer edited", True, lambda code, data: _edit_data(data)),
    ("conversation_templates.py: v1 system prompt", True, _edit_templates),
    ("conversation.py: v1 system prompt set there", True, _edit_conversation),
    ("preprocess.py: label rule (first target masked)", True, _edit_labels),
    ("preprocess.py: a comment added", False, _edit_comment),
]


def invalidation(args, work: Path, methods: list[str]) -> str:
    """For each scenario and method: rebuilt or reused, and whether the tokens are right."""
    sys.path.insert(0, str(REPO / "bench"))
    from bench_validate import make_data

    cells = {}
    for method in methods:
        root = work / f"inval_{method}"
        code = root / "code"
        shutil.copytree(REPO / "llava", code / "llava", ignore=shutil.ignore_patterns("__pycache__"))
        data, _ = make_data(root / "data", args.invalidation_samples, seed=1)
        base = dict(method=method, root=str(root), hf_cache=str(root / "hf"), data=str(data), code=str(code),
                    tokenizer=str(TOKENIZERS / "llama2"), template="v1", num_proc=args.num_proc,
                    reads=args.invalidation_samples, expect=True)  # fmt: skip
        first = run_child(**base)
        assert first["built"] and first["digest"] == first["expected"], first
        for name, must_change, change in SCENARIOS:
            undo = change(code, data) if callable(change) else None
            try:
                r = run_child(**(base if undo else dict(base, **change)))
            finally:
                if undo:
                    undo()
            right = r["digest"] == r["expected"]
            changed = r["expected"] != first["digest"]
            if changed != must_change:
                raise RuntimeError(
                    f"scenario {name!r} was meant to {'' if must_change else 'not '}change tokens"
                )
            cells[name, method] = ("rebuilt" if r["built"] else "reused") + (
                ", right" if right else ", **STALE**"
            )
        print(f"  {method}: " + "; ".join(f"{n}: {cells[n, method]}" for n, _, _ in SCENARIOS))
    head = "| change | tokens change | " + " | ".join(methods) + " |\n| --- | --- |" + " --- |" * len(methods)
    lines = [f"| {n} | {'yes' if c else 'no'} | " + " | ".join(cells[n, m] for m in methods) + " |"
             for n, c, _ in SCENARIOS]  # fmt: skip
    return head + "\n" + "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--reads", type=int, default=10_000)
    parser.add_argument("--num-proc", type=int, default=2, help="tokenising processes, both methods")
    parser.add_argument("--repeats", type=int, default=2, help="cold + warm pairs per method (best is kept)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--invalidation-samples", type=int, default=1000, help="0: skip the check")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(json.loads(args.child))))
        return
    sys.path.insert(0, str(REPO / "bench"))
    from bench_validate import make_data

    print(f"cpus: {os.cpu_count()}, load average before: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="bench-token-cache-") as tmp:
        work = Path(tmp)
        if args.samples:
            data, _ = make_data(work / "data", args.samples)
            size = data.stat().st_size / 1e6
            print(f"{args.samples} samples, {size:.0f} MB of JSON; {args.reads} random reads")
            results = measure(args, data, work)
            r = next(iter(results.values()))["warm"]
            print(f"\n{r['n']} samples tokenised, identical reads in every method (digest {r['digest']})\n")
            print(table(results))
        if args.invalidation_samples:
            print(f"\ninvalidation ({args.invalidation_samples} samples, a copy of llava/):")
            print(invalidation(args, work, [m for m in args.methods.split(",") if m != "datasets_flagged"]))
    print(f"load average after: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
