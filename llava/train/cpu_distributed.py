"""Training on a machine without an accelerator: the one place that adapts the HF Trainer to it.

On a GPU (or any other torch accelerator) machine this module does nothing. Without one:
- `use_cpu` is set, which the HF Trainer needs to run as DDP under torchrun (otherwise every rank
  silently trains alone) and for bf16 autocast on the CPU;
- with `--deepspeed`, a plain `python` process gets the launcher variables DeepSpeed expects (so
  it does not go looking for MPI), and accelerate's process state is created up front for
  DeepSpeed over gloo. Without this, accelerate believes two CPU processes are one and DeepSpeed
  rejects the batch size (`train_batch_size is not equal to micro_batch_per_gpu *
  gradient_acc_step * world_size`).
"""

from __future__ import annotations

import logging
import os
import socket

import torch

logger = logging.getLogger(__name__)


def has_accelerator() -> bool:
    """True when torch sees a GPU or another accelerator this process can train on."""
    accel = getattr(torch, "accelerator", None)
    if accel is not None and hasattr(accel, "is_available"):
        return bool(accel.is_available())
    return torch.cuda.is_available()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _single_process_launcher_env() -> None:
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return
    defaults = {
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)


def _deepspeed_process_state() -> None:
    from accelerate import PartialState
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType

    if PartialState._shared_state and PartialState().distributed_type != DistributedType.DEEPSPEED:
        # A previous non-DeepSpeed run in this process left its state behind.
        AcceleratorState._reset_state(reset_partial_state=True)
    previous = os.environ.get("ACCELERATE_USE_DEEPSPEED")
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    try:
        PartialState(backend="gloo")
    finally:
        if previous is None:
            del os.environ["ACCELERATE_USE_DEEPSPEED"]
        else:
            os.environ["ACCELERATE_USE_DEEPSPEED"] = previous


def configure_cpu_distributed(args) -> None:
    """Adjust TrainingArguments `args` (before its own __post_init__) for an accelerator-less machine."""
    if has_accelerator():
        return
    if not args.use_cpu:
        logger.info("no GPU found: training on the CPU (use_cpu=True)")
    args.use_cpu = True
    if args.tf32:
        logger.warning("--tf32 True ignored: TF32 needs an Ampere or newer NVIDIA GPU")
        args.tf32 = None
    if not args.deepspeed:
        return
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    _single_process_launcher_env()
    _deepspeed_process_state()
    config = args.accelerator_config
    if config is None:
        config = {}
    elif not isinstance(config, dict):
        config = config.to_dict() if hasattr(config, "to_dict") else dict(vars(config))
    args.accelerator_config = {**config, "use_configured_state": True}
