"""Multi-node launching, run for real on one machine: two "nodes" of one process each.

The launch prefixes are read from docs/Training.md's multi-node section (the `LAUNCH="..."` lines for
two nodes), with `node0` -> 127.0.0.1, a free port, one process per node and the node's rank filled
in, so the documented commands are the ones tested. Each launcher is started twice, as node 0 and
node 1, and both run stage 2 under ZeRO-3 on the CPU (gloo); their per-step losses must equal those
of the one-node two-process run (the same world size, so the same data split and the same sums).
- torchrun: `--nnodes 2 --node_rank R --master_addr 127.0.0.1` (static rendezvous on node 0);
- the deepspeed launcher: `--hostfile` with two hosts and `--no_ssh --node_rank R`, which starts each
  node's processes locally instead of over ssh/pdsh.
"""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from test_train import REPO, one_thread, stage2_args, train_kit  # noqa: F401 (fixture)

pytest.importorskip("deepspeed")
from test_train_deepspeed import ENTRY, torchrun  # noqa: E402 (needs deepspeed)

from llava.train.cpu_distributed import _free_port  # noqa: E402

DOC = REPO / "docs" / "Training.md"
SECTION = "## Launching on one node, several nodes, or without DeepSpeed"
NOISE = ("FutureWarning", "return func(", "it/s]", "s/it]")
STEPS = 3
# What marks each launcher's two-node, one-command-per-node line in the section.
TWO_NODES = {"torchrun": "--nnodes 2", "deepspeed": "--no_ssh"}
EXTRA = f"--deepspeed {REPO / 'zero3.json'} --max_steps {STEPS} --per_device_train_batch_size 2 --save_strategy no"


def documented_launches() -> dict[str, str]:
    """The two-node `LAUNCH="..."` prefixes of the multi-node section, keyed by launcher word."""
    text = DOC.read_text()
    assert SECTION in text, f"{DOC}: section {SECTION!r} not found"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    found = {}
    for value in re.findall(r'LAUNCH="([^"]+)"', section):
        launcher = value.split()[0]
        if TWO_NODES.get(launcher, "\0") in value:
            found[launcher] = value
    assert set(found) == {"torchrun", "deepspeed"}, f"{DOC}: two-node LAUNCH lines found: {found}"
    return found


def node_command(launch: str, node_rank: int, port: int, hostfile: Path, entry: Path, args) -> list[str]:
    """The documented prefix for node `node_rank`, on this machine, launching `entry args`."""
    launch = launch.replace("$NODE_RANK", str(node_rank)).replace("node0", "127.0.0.1")
    launch = launch.replace("--master_port 29500", f"--master_port {port}")
    launch = launch.replace("--nproc_per_node 8", "--nproc_per_node 1").replace("./hostfile", str(hostfile))
    words = shlex.split(launch)
    runner = {"torchrun": "torch.distributed.run", "deepspeed": "deepspeed.launcher.runner"}[words[0]]
    return [sys.executable, "-m", runner, *words[1:], str(entry), *args]


def launch_two_nodes(tmp_path: Path, launcher: str, args) -> str:
    """Starts node 0 and node 1 of the documented `launcher` line at once; returns their joined logs."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    entry, hostfile = tmp_path / "entry.py", tmp_path / "hostfile"
    entry.write_text(ENTRY)
    hostfile.write_text("node0 slots=1\nnode1 slots=1\n")  # the doc's hostfile, one slot per node
    launch, port = documented_launches()[launcher], _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    procs = []
    for rank in (0, 1):
        log = open(tmp_path / f"node{rank}.log", "w")
        cmd = node_command(launch, rank, port, hostfile, entry, args)
        procs.append((subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO), log))
    codes = []
    for proc, log in procs:
        try:
            codes.append(proc.wait(timeout=300))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes.append(proc.wait())
        log.close()
    logs = [(tmp_path / f"node{rank}.log").read_text() for rank in (0, 1)]
    for rank, (code, log) in enumerate(zip(codes, logs)):
        tail = "\n".join([line for line in log.splitlines() if not any(n in line for n in NOISE)][-40:])
        assert code == 0, f"{launcher} node {rank} exited {code}; log in {tmp_path}/node{rank}.log\n{tail}"
    return "\n".join(logs)


def step_losses(out: Path) -> dict[int, float]:
    """Loss per step from `out`'s trainer_state.json, after checking that two ranks shared the data."""
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    # 20 samples, 2 per rank and step: a world of two covers 4 a step (alone, a node would cover 2)
    assert history[-1]["epoch"] == pytest.approx(STEPS * 2 * 2 / 20), (out, history[-1])
    return {h["step"]: h["loss"] for h in history if "loss" in h}


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return train_kit(tmp_path_factory)


@pytest.fixture(scope="module")
def one_node(kit, tmp_path_factory):
    """The reference: one node, two processes (torchrun --standalone --nproc_per_node 2)."""
    tmp = tmp_path_factory.mktemp("one-node")
    torchrun(tmp, stage2_args(kit, tmp / "out", extra=EXTRA))
    losses = step_losses(tmp / "out")
    assert sorted(losses) == list(range(1, STEPS + 1)) and all(0 < x < 20 for x in losses.values()), losses
    return losses


def test_two_node_launch_lines_are_documented():
    launches = documented_launches()
    for launcher, words in {
        "torchrun": (
            "--node_rank $NODE_RANK",
            "--master_addr node0",
            "--master_port 29500",
            "--nproc_per_node 8",
        ),
        "deepspeed": (
            "--hostfile ./hostfile",
            "--node_rank $NODE_RANK",
            "--master_addr node0",
            "--master_port 29500",
        ),
    }.items():
        for word in words:  # what node_command() substitutes
            assert word in launches[launcher], (launcher, word, launches[launcher])


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "deepspeed"])
def test_two_nodes_match_one_node_two_processes(kit, one_node, launcher, tmp_path):
    out = tmp_path / "out"
    launch_two_nodes(tmp_path, launcher, stage2_args(kit, out, extra=EXTRA))
    assert (out / "model.safetensors").is_file()  # the final save gathered the ZeRO-3 partitions
    two_nodes = step_losses(out)
    assert sorted(two_nodes) == sorted(one_node), two_nodes
    for step, loss in one_node.items():
        assert two_nodes[step] == pytest.approx(loss, abs=1e-5), (launcher, step, two_nodes[step], loss)
