"""Train LLaVA: one entry for both stages (projector pre-training, instruction tuning), LoRA and QLoRA.

    deepspeed llava/train/train_mem.py --deepspeed ./scripts/zero2.json --version plain \\
        --tune_mm_mlp_adapter True ...                                   # stage 1
    deepspeed llava/train/train_mem.py --deepspeed ./scripts/zero3.json --version v1 \\
        --pretrain_mm_mlp_adapter ./checkpoints/.../mm_projector.bin ...  # stage 2

See scripts/v1_5/*.sh for the published settings. A run resumes by itself from the newest complete
`checkpoint-*` in --output_dir (or from --resume_from_checkpoint PATH).
"""

from __future__ import annotations

import logging
import sys

import transformers

from llava.data.collator import DataCollatorForSupervisedDataset
from llava.data.dataset import LazySupervisedDataset, make_supervised_data_module
from llava.data.preprocess import preprocess, preprocess_multimodal
from llava.data.sample_format import SampleFormat
from llava.train.arguments import DataArguments, ModelArguments, TrainingArguments
from llava.train.checkpoints import check_options, newest_complete
from llava.train.freeze import FreezePolicy
from llava.train.llava_trainer import LLaVATrainer
from llava.train.model_setup import build_model_and_tokenizer, find_all_linear_names
from llava.train.param_table import format_parameter_table
from llava.train.preemption import StopGuard, exit_on_interrupt
from llava.train.preflight import preflight
from llava.train.resume import ResumeError, choose_checkpoint
from llava.utils.collector import frozen

logger = logging.getLogger("llava.train")

__all__ = [
    "DataArguments",
    "DataCollatorForSupervisedDataset",
    "LazySupervisedDataset",
    "ModelArguments",
    "TrainingArguments",
    "find_all_linear_names",
    "latest_complete_checkpoint",
    "make_supervised_data_module",
    "preprocess",
    "preprocess_multimodal",
    "train",
]


def latest_complete_checkpoint(output_dir: str, **check_kw) -> str | None:
    """The newest `checkpoint-N` in `output_dir` a run can resume (llava.train.checkpoints: its save
    finished, and it holds weights, optimizer, scheduler, RNG and a trainer state that parses), or
    None. Newer folders that are not are skipped, each logged with what it lacks."""
    found, skipped = newest_complete(output_dir, **check_kw)
    for check in skipped:
        logger.warning("skipping %s: %s", check.path, check.reason)
    return found


def resolve_resume(training_args) -> str | None:
    """--resume_from_checkpoint PATH, checked first (ResumeError naming what it lacks, unless
    --resume_weights_only True); else (or with True/latest) the newest complete checkpoint."""
    return choose_checkpoint(
        training_args.resume_from_checkpoint,
        training_args.output_dir,
        weights_only=bool(getattr(training_args, "resume_weights_only", False)),
        **check_options(training_args),
    )


class _Started(transformers.TrainerCallback):
    """Marks that training began: the Trainer loads a checkpoint's state before on_train_begin."""

    began = False

    def on_train_begin(self, args, state, control, **kwargs):
        self.began = True


def _train_or_explain(trainer, checkpoint: str | None) -> None:
    """trainer.train(), naming the checkpoint when its state does not fit this run's model."""
    started = _Started()
    trainer.add_callback(started)
    try:
        trainer.train(resume_from_checkpoint=checkpoint)
    except (ValueError, RuntimeError, KeyError) as err:
        if not checkpoint or started.began:
            raise
        raise ResumeError(
            f"could not resume from {checkpoint} ({type(err).__name__}: {str(err)[:300]}). If it was "
            "written with other flags (LoRA on or off, other tuned modules, another projector), rerun "
            "with the flags that wrote it, or give a new --output_dir (or move the checkpoint-* "
            "folders away) to start afresh."
        ) from err
    finally:
        trainer.remove_callback(started)


def _setup_logging(training_args) -> None:
    level = logging.INFO if training_args.should_log else logging.WARNING
    if not logging.getLogger().handlers:
        logging.basicConfig(
            format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", stream=sys.stdout
        )
    logging.getLogger("llava").setLevel(level)


def train(attn_implementation: str | None = None, argv: list[str] | None = None, callbacks=None):
    """Parse the command line (or `argv`), train, save; returns the trainer.

    The objects alive at its start (the imported libraries': about a million) are kept out of the
    cyclic garbage collector's passes for the run (llava.utils.collector.frozen)."""
    with frozen():
        return _train(attn_implementation, argv, callbacks)


def _train(attn_implementation: str | None, argv: list[str] | None, callbacks):
    parser = transformers.HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    preflight(data_args, training_args, model_args)
    _setup_logging(training_args)
    logger.info("model_args: %s", model_args)
    logger.info("data_args: %s", data_args)
    transformers.set_seed(training_args.seed)

    model, tokenizer, template = build_model_and_tokenizer(
        model_args, data_args, training_args, attn_implementation
    )
    logger.info("template %s; parameters:\n%s", template or "default (v1)", format_parameter_table(model))
    # What the data side needs, built once here and handed to the dataset and the collator; the
    # loader gives 8-bit pixels, normalised by the tower with its own processor's table.
    sample_format = SampleFormat.for_model(
        model, tokenizer, template, vision=model_args.vision_tower is not None, uint8_images=True
    )
    logger.info("sample format: %s", sample_format)
    data_module = make_supervised_data_module(tokenizer, data_args, sample_format, training_args)
    stage = FreezePolicy.from_args(model_args, training_args)
    trainer = LLaVATrainer(
        model=model,
        processing_class=tokenizer,
        args=training_args,
        callbacks=callbacks,
        projector_only=stage.projector_only,
        save_embeddings_with_projector=stage.train_input_embeddings,
        **data_module,
    )
    checkpoint = resolve_resume(training_args)
    if checkpoint:
        logger.info("resuming from %s", checkpoint)
    # SIGTERM / SIGINT or an unreadable sample: stop after a whole step, checkpoint, raise (preemption.py)
    with StopGuard(trainer, resumed_from=checkpoint) as guard:
        _train_or_explain(trainer, checkpoint)
        guard.raise_if_stopped()
        trainer.save_state()
        model.config.use_cache = True
        trainer.save_model(training_args.output_dir)
        trainer.accelerator.wait_for_everyone()  # no rank leaves before the main one has written everything
    skipped = getattr(data_module["train_dataset"], "skipped", 0)
    if skipped:
        logger.warning("--skip_bad_samples: %d samples could not be loaded and were replaced", skipped)
    return trainer


if __name__ == "__main__":
    exit_on_interrupt(train)  # a stop on SIGTERM / SIGINT exits 143 / 130 after its checkpoint
