"""scripts/v1_5/eval/*.sh: one per benchmark, and every Python command they run exists and takes their flags."""

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts" / "v1_5" / "eval"
BENCHMARKS = [
    "vqav2",
    "gqa",
    "vizwiz",
    "sqa",
    "textvqa",
    "pope",
    "mme",
    "mmbench",
    "mmbench_cn",
    "seed",
    "llavabench",
    "mmvet",
]
ANSWER_RUNNERS = {
    "llava.eval.model_vqa",
    "llava.eval.model_vqa_loader",
    "llava.eval.model_vqa_science",
    "llava.eval.model_vqa_mmbench",
}
# where the shared argument parsers of the thin wrappers live
PARSER_HOMES = ("llava/eval/gpt_review.py", "llava/eval/answer_runner.py")


def commands(script: Path):
    """(target file, [flags]) for every `python -m module` / `python file.py` command in a script."""
    code = "\n".join(line for line in script.read_text().splitlines() if not line.lstrip().startswith("#"))
    text = re.sub(r"\\\n", " ", code)
    for m in re.finditer(r"python (-m )?([\w./]+)([^\n]*)", text):
        module, target, rest = m.group(1), m.group(2), m.group(3)
        path = target.replace(".", "/") + ".py" if module else target
        yield (target if module else None), path, re.findall(r"(?<![\w-])(--[\w-]+)", rest)


HELPERS = ["sharded_answers"]  # shared by vqav2.sh, gqa.sh and seed.sh


def test_one_script_per_benchmark():
    assert sorted(p.stem for p in SCRIPTS.glob("*.sh")) == sorted(BENCHMARKS + HELPERS)


@pytest.mark.parametrize("name", BENCHMARKS + HELPERS)
def test_script_syntax_and_commands(name):
    script = SCRIPTS / f"{name}.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    assert script.read_text().startswith("#!/bin/bash\n#"), "each script documents its data layout at the top"
    found = list(commands(script))
    assert found
    for module, path, flags in found:
        if module in ANSWER_RUNNERS and not (REPO / path).is_file():
            continue  # the answer runner is checked once it exists
        assert (REPO / path).is_file(), f"{name}.sh runs {path}, which does not exist"
        source = (REPO / path).read_text()
        if "import main as _main" in source or "add_runner_args" in source:
            source += "".join((REPO / home).read_text() for home in PARSER_HOMES)
        for flag in flags:
            assert f'"{flag}"' in source, f"{name}.sh passes {flag} to {path}, which does not define it"


FAKE_PYTHON = """#!/bin/bash
# stands in for `python -m llava.eval.model_vqa_loader`: one line naming its shard
while [ $# -gt 0 ]; do
  case $1 in --answers-file) out=$2; shift;; --chunk-idx) k=$2; shift;; esac; shift
done
[ -n "${FAIL_SHARD:-}" ] && [ "$k" = "$FAIL_SHARD" ] && exit 3
echo "{\\"shard\\": $k, \\"gpu\\": \\"$CUDA_VISIBLE_DEVICES\\"}" > "$out"
"""


def _run_sharded(tmp_path, **env):
    import json
    import os

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "python").write_text(FAKE_PYTHON)
    (bin_dir / "python").chmod(0o755)
    out = tmp_path / "answers"
    res = subprocess.run(
        ["bash", str(SCRIPTS / "sharded_answers.sh"), "model", "q.jsonl", "images", str(out)],
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", **env},
        capture_output=True,
        text=True,
    )
    merged = out / "merge.jsonl"
    rows = [json.loads(line) for line in merged.read_text().splitlines()] if merged.exists() else None
    return res, rows


def test_sharded_answers_merges_one_shard_per_gpu_in_order(tmp_path):
    res, rows = _run_sharded(tmp_path, CUDA_VISIBLE_DEVICES="4,5,6")
    assert res.returncode == 0, res.stderr
    assert rows == [{"shard": 0, "gpu": "4"}, {"shard": 1, "gpu": "5"}, {"shard": 2, "gpu": "6"}]


def test_sharded_answers_does_not_merge_after_a_failed_shard(tmp_path):
    res, rows = _run_sharded(tmp_path, CUDA_VISIBLE_DEVICES="0,1", FAIL_SHARD="1")
    assert res.returncode == 1 and "shard failed" in res.stderr
    assert rows is None
