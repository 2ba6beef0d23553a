"""Start-up cost: the entry modules do not import what only some runs need.

bitsandbytes (QLoRA, --load-4bit/8bit), deepspeed (--deepspeed), gradio / fastapi / uvicorn (the web
server, the controller and workers), liger_kernel (--use_liger), wandb (--report_to wandb) and
flash_attn stay out of a fresh `import llava.train.train`, `llava.serve.cli` and
`llava.eval.model_vqa_loader`. peft is not among them: transformers imports it with its
TrainingArguments whenever it is installed, and peft imports bitsandbytes at once, which `llava`
defers (`llava._defer_import`) until a run uses it. Each check runs in a fresh interpreter.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from test_train import REPO, stage2_args, train_kit

ONLY_SOME_RUNS = (
    "bitsandbytes",
    "deepspeed",
    "gradio",
    "fastapi",
    "uvicorn",
    "liger_kernel",
    "wandb",
    "flash_attn",
)

# Prints `LOADED [...]`: which of ONLY_SOME_RUNS have run (a deferred module that has not is not loaded).
PROBE = textwrap.dedent(
    f"""
    import json, sys

    def loaded(name):
        import llava

        module = sys.modules.get(name)
        ran = module is not None and not isinstance(module, llava._DeferredModule)
        return ran or any(key.startswith(name + ".") for key in sys.modules)

    def report():
        print("LOADED " + json.dumps(sorted(n for n in {ONLY_SOME_RUNS!r} if loaded(n))), flush=True)
    """
)


def run_python(code: str, *args: str, timeout: int = 300) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


def loaded_modules(stdout: str) -> list[str]:
    lines = [line.split("LOADED ", 1)[1] for line in stdout.splitlines() if "LOADED " in line]
    assert lines, stdout[-2000:]
    return json.loads(lines[-1])


@pytest.mark.parametrize("module", ["llava.train.train", "llava.serve.cli", "llava.eval.model_vqa_loader"])
def test_entry_module_imports_nothing_only_some_runs_need(module):
    out = run_python(PROBE + f"import {module}\nreport()\n")
    assert loaded_modules(out) == [], f"import {module} loads {loaded_modules(out)}"


def test_deferred_bitsandbytes_loads_where_it_is_first_used():
    pytest.importorskip("bitsandbytes")  # (in this process: it is the subprocess that must stay lazy)
    code = PROBE + textwrap.dedent(
        """
        import importlib.metadata, importlib.util
        import llava.train.train
        import peft.helpers
        assert importlib.util.find_spec("bitsandbytes") is not None  # asking whether it is installed
        report()
        bnb = peft.helpers.bnb  # what peft imported is the deferred module itself
        assert bnb is sys.modules["bitsandbytes"]
        assert bnb.nn.Linear4bit.__name__ == "Linear4bit"  # first use: it runs
        assert bnb.__version__ == importlib.metadata.version("bitsandbytes"), bnb.__version__
        import bitsandbytes.optim
        report()
        """
    )
    out = run_python(code)
    before, after = [
        json.loads(line.split("LOADED ", 1)[1]) for line in out.splitlines() if "LOADED " in line
    ]
    assert before == [] and after == ["bitsandbytes"], (before, after)


def test_a_submodule_import_runs_the_deferred_package_first():
    pytest.importorskip("bitsandbytes")
    code = PROBE + textwrap.dedent(
        """
        import llava
        from bitsandbytes.nn import Linear8bitLt  # the package's __init__ runs before its submodule
        import bitsandbytes
        assert type(bitsandbytes).__name__ == "module" and bitsandbytes.nn.Linear8bitLt is Linear8bitLt
        report()
        """
    )
    assert loaded_modules(run_python(code)) == ["bitsandbytes"]


# The stage-2 command up to the moment the Trainer begins its first step.
FIRST_STEP = PROBE + textwrap.dedent(
    """
    import os
    import llava.train.train as entry
    from transformers.trainer_callback import CallbackHandler

    def first_step(self, args, state, control):
        report()
        os._exit(0)

    CallbackHandler.on_step_begin = first_step
    entry.train(argv=sys.argv[1:])
    """
)


@pytest.mark.slow
def test_stage2_run_reaches_its_first_step_without_them(tmp_path_factory, tmp_path):
    """Up to step 0 of a stage-2 run (no DeepSpeed, no LoRA) none of them is loaded but deepspeed, which
    accelerate imports in the Trainer's constructor whenever it is installed."""
    kit = train_kit(tmp_path_factory)
    args = stage2_args(kit, tmp_path / "out", extra="--max_steps 1 --save_strategy no")
    loaded = loaded_modules(run_python(FIRST_STEP, *args))
    assert set(loaded) <= {"deepspeed"}, loaded
