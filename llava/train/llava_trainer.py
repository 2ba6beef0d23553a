"""LLaVATrainer: the HF Trainer plus LLaVA's sampler, optimizer groups and checkpoint contents.

- Sampler: `--group_by_modality_length` (image and text-only batches apart) or `--group_by_length`,
  both seeded and resumable (see llava.train.sampler); `--packing` packs each step's samples into
  rows (llava.train.packed_sampler, llava.data.packing).
- Optimizer: `--mm_projector_lr` / `--mm_vision_tower_lr` give the projector / vision tower their
  own learning rates (weight decay split as usual); the parts are the model's (llava.model.parts).
- Checkpoints: stage 1 (`projector_only=True`, from --tune_mm_mlp_adapter) writes `mm_projector.bin`
  (keys `model.mm_projector.*`, plus `model.embed_tokens.weight` with `save_embeddings_with_projector`
  for im_start/end tokens) instead of the whole model, plus the optimizer, scheduler, RNG and
  trainer state, so it resumes like any other run; LoRA runs add `non_lora_trainables.bin` (the
  projector and any other trained non-LoRA weights) to every checkpoint and restore it on resume.
- Publishing (llava.train.checkpoints): a checkpoint is marked complete only once every rank wrote
  its files; `--save_total_limit` rotates after that; a failed save (disk full named as such) removes
  its partial folder; a rough free-space check warns before each save.
"""

from __future__ import annotations

import logging
import os

import torch
from transformers import Trainer

from llava.model.parts import PROJECTOR, VISION_TOWER, parameter_parts
from llava.model.weight_files import save_torch_file
from llava.train import checkpoints, zero
from llava.train.sampler import LengthGroupedSampler

logger = logging.getLogger(__name__)

MM_PROJECTOR_FILE = "mm_projector.bin"
NON_LORA_FILE = "non_lora_trainables.bin"

__all__ = ["LLaVATrainer", "LengthGroupedSampler", "MM_PROJECTOR_FILE", "NON_LORA_FILE"]


def _is_peft(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def _worker_init(num_workers: int, rank: int):
    """transformers' DataLoader worker seeding (its signature grew `num_workers`/`rank` in 5.x)."""
    import inspect
    from functools import partial

    from transformers.trainer_utils import seed_worker

    if "num_workers" in inspect.signature(seed_worker).parameters:
        return partial(seed_worker, num_workers=num_workers, rank=rank)
    return seed_worker


def _packing_capacity(collator, tokenizer) -> int:
    """Tokens per packed row: the collator's length budget (llava.data.length_budget), or the
    tokenizer's model_max_length for a collator without one."""
    budget = getattr(collator, "budget", None)
    if budget is not None:
        return budget.max_length
    return (getattr(collator, "tokenizer", None) or tokenizer).model_max_length


class LLaVATrainer(Trainer):
    """``projector_only``: the projector stage (saves and resumes ``mm_projector.bin``, not the model);
    ``save_embeddings_with_projector``: that file also holds the input embeddings (im_start/end tokens).
    Both come from the run's freeze policy (llava.train.freeze.FreezePolicy)."""

    def __init__(
        self, *args, projector_only: bool = False, save_embeddings_with_projector: bool = False, **kwargs
    ):
        self._projector_only = bool(projector_only)
        self.save_embeddings_with_projector = bool(save_embeddings_with_projector)
        super().__init__(*args, **kwargs)

    # ------------------------------------------------------------------ loss
    def compute_loss(self, model, inputs, *args, **kwargs):
        """transformers' compute_loss; with --loss_chunk_tokens N the model's forward is asked for the
        chunked loss (llava.model.chunked_loss) in this call's arguments."""
        chunk = getattr(self.args, "loss_chunk_tokens", 0)
        if chunk and "labels" in inputs and model.training:
            inputs = {**inputs, "loss_chunk_tokens": chunk}
        return super().compute_loss(model, inputs, *args, **kwargs)

    # ------------------------------------------------------------------ sampler
    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if hasattr(dataset, "stream_sampler"):  # --streaming: the stream order (llava.data.streaming)
            return dataset.stream_sampler()
        by_modality = getattr(self.args, "group_by_modality_length", False)
        by_length = getattr(self.args, "group_by_length", False)
        if dataset is None or not (by_modality or by_length) or not hasattr(dataset, "__len__"):
            return super()._get_train_sampler(train_dataset)
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return LengthGroupedSampler(
            self.args.train_batch_size,
            world_size=self.args.world_size * self.args.gradient_accumulation_steps,
            lengths=dataset.modality_lengths if by_modality else dataset.lengths,
            group_by_modality=by_modality,
            seed=seed,
        )

    def get_train_dataloader(self):
        """With --packing: micro-batches of packed rows from PackedBatchSampler, else the HF loader."""
        if not getattr(self.args, "packing", False) or hasattr(self.train_dataset, "stream_sampler"):
            return (
                super().get_train_dataloader()
            )  # --streaming --packing: the collator packs each micro-batch
        from torch.utils.data import DataLoader

        from llava.model.packed_inputs import layout_for
        from llava.train.packed_sampler import PackedBatchSampler

        dataset = self.train_dataset
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        by_modality = getattr(self.args, "group_by_modality_length", False)
        sampler = PackedBatchSampler(
            dataset.modality_lengths if by_modality else dataset.lengths,
            batch_size=self.args.train_batch_size,
            num_chunks=self.args.world_size * self.args.gradient_accumulation_steps,
            capacity=_packing_capacity(self.data_collator, self.processing_class),
            group_by_modality=by_modality,
            group_by_length=getattr(self.args, "group_by_length", False),
            seed=seed,
            layout=layout_for(getattr(getattr(self.model, "config", None), "_attn_implementation", None)),
        )
        workers = self.args.dataloader_num_workers
        loader = DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=self.data_collator,
            num_workers=workers,
            pin_memory=self.args.dataloader_pin_memory,
            persistent_workers=self.args.dataloader_persistent_workers and workers > 0,
            prefetch_factor=self.args.dataloader_prefetch_factor if workers > 0 else None,
            worker_init_fn=_worker_init(workers, self.args.process_index),
        )
        return self.accelerator.prepare(loader)

    # ------------------------------------------------------------------ optimizer
    def _lr_of(self, part: str) -> float | None:
        if self.args.mm_projector_lr is not None and part == PROJECTOR:
            return self.args.mm_projector_lr
        if getattr(self.args, "mm_vision_tower_lr", None) is not None and part == VISION_TOWER:
            return self.args.mm_vision_tower_lr
        return None

    def create_optimizer(self, model=None):
        special = (
            self.args.mm_projector_lr is not None
            or getattr(self.args, "mm_vision_tower_lr", None) is not None
        )
        if self.optimizer is not None or not special:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        part_of = parameter_parts(opt_model)
        groups: dict[tuple, dict] = {}
        for name, p in opt_model.named_parameters():
            if not p.requires_grad:
                continue
            lr = self._lr_of(part_of[name])
            wd = self.args.weight_decay if name in decay else 0.0
            if (lr, wd) not in groups:
                groups[(lr, wd)] = {"params": [], "weight_decay": wd} | ({} if lr is None else {"lr": lr})
            groups[(lr, wd)]["params"].append(p)
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        self.optimizer = optimizer_cls(list(groups.values()), **optimizer_kwargs)
        for (lr, wd), g in groups.items():
            logger.info(
                "optimizer group: %d tensors, lr=%s, weight_decay=%s",
                len(g["params"]),
                self.args.learning_rate if lr is None else lr,
                wd,
            )
        return self.optimizer

    # ------------------------------------------------------------------ saving
    @property
    def projector_only(self) -> bool:
        return self._projector_only

    def _unwrapped(self):
        return self.accelerator.unwrap_model(self.model) if hasattr(self, "accelerator") else self.model

    def save_mm_adapter(self, output_dir: str) -> None:
        """mm_projector.bin (keys `model.mm_projector.*`) and config.json into `output_dir`. All ranks call."""
        model = self._unwrapped()
        state = zero.mm_adapter_state(model, with_embeddings=self.save_embeddings_with_projector)
        if self.args.should_save:
            os.makedirs(output_dir, exist_ok=True)
            model.config.save_pretrained(output_dir)
            save_torch_file(state, os.path.join(output_dir, MM_PROJECTOR_FILE))

    def save_non_lora_trainables(self, output_dir: str) -> None:
        model = self._unwrapped()
        state = zero.non_lora_trainable_state(model.named_parameters())
        if self.args.should_save:
            os.makedirs(output_dir, exist_ok=True)
            model.config.save_pretrained(output_dir)
            save_torch_file(state, os.path.join(output_dir, NON_LORA_FILE))

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if self.projector_only:
            self.save_mm_adapter(output_dir)
            return
        super().save_model(output_dir, _internal_call=_internal_call)
        if _is_peft(self._unwrapped()):
            self.save_non_lora_trainables(output_dir)

    # ------------------------------------------------------------------ checkpoints: whole or absent
    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's checkpoint, published whole (llava.train.checkpoints): begun by the main
        process, written by every rank, marked complete after a barrier, and only then rotated."""
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        run_dir = self._get_output_dir(trial=trial)
        folder = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        limit = self.args.save_total_limit
        try:
            if self.args.should_save:
                self._warn_free_space(run_dir)
                checkpoints.begin_save(folder)
            self.accelerator.wait_for_everyone()
            self.args.save_total_limit = None  # the Trainer's own rotation would run before the marker
            try:
                super()._save_checkpoint(model, trial)
            finally:
                self.args.save_total_limit = limit
            self.accelerator.wait_for_everyone()
            if self.args.should_save:
                step, world = self.state.global_step, self.args.world_size
                checkpoints.publish(folder, global_step=step, world_size=world)
        except Exception as err:
            self._save_failed(folder, run_dir, err)
            raise
        if self.args.should_save:
            checkpoints.rotate(
                run_dir,
                limit,
                keep=(self.state.best_model_checkpoint,),
                need_state=not self.args.save_only_model,
                **checkpoints.check_options(self.args),
            )

    def _save_failed(self, folder: str, run_dir: str, err: Exception) -> None:
        """Remove the partial checkpoint (main process); a full disk becomes CheckpointDiskFull."""
        if self.args.should_save:
            checkpoints.discard(folder)
        previous, _ = checkpoints.newest_complete(run_dir, **checkpoints.check_options(self.args))
        kept = f"the last complete checkpoint, {previous}, is kept" if previous else "no complete checkpoint"
        if checkpoints.is_disk_full(err):
            raise checkpoints.CheckpointDiskFull(
                f"no space left on the device while saving the checkpoint {folder} ({type(err).__name__}: "
                f"{str(err)[:200]}). The partial checkpoint was removed; {kept}. Free some space (or lower "
                "--save_total_limit) and rerun the same command: it resumes from the last complete one",
                folder,
            ) from err
        err.add_note(f"while saving the checkpoint {folder} (the partial folder was removed; {kept})")

    def _warn_free_space(self, run_dir: str) -> str | None:
        """Warn when the disk looks too full for the next checkpoint: the size of the newest finished
        one, or (none yet) the saved weights plus Adam's two fp32 moments per trainable parameter."""
        for _, path in reversed(checkpoints.checkpoints_in(run_dir)):
            if checkpoints.check_checkpoint(path).whole:
                needed = checkpoints.folder_bytes(path)
                return checkpoints.free_space_warning(run_dir, needed, f"the size of {path}")
        params = list(self._unwrapped().parameters())
        numel = [getattr(p, "ds_numel", p.numel()) for p in params]
        trainable = sum(n for n, p in zip(numel, params) if p.requires_grad)
        partial = self.projector_only or _is_peft(self._unwrapped())
        saved = sum(n * p.element_size() for n, p in zip(numel, params) if p.requires_grad or not partial)
        needed = saved + (0 if self.args.save_only_model else 8 * trainable)
        basis = "estimated from the model: saved weights + Adam's two fp32 moments"
        return checkpoints.free_space_warning(run_dir, needed, basis)

    # ------------------------------------------------------------------ resuming (without DeepSpeed)
    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        # DeepSpeed restores its own checkpoints (module, optimizer, scheduler) and never comes here.
        model = self.model if model is None else model
        if self.projector_only:
            from llava.model import load_mm_projector_state

            path = os.path.join(resume_from_checkpoint, MM_PROJECTOR_FILE)
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"{path} missing: cannot resume the projector stage from this checkpoint"
                )
            logger.info("resuming the projector from %s", path)
            load_mm_projector_state(model, torch.load(path, map_location="cpu", weights_only=True))
            return
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = os.path.join(resume_from_checkpoint, NON_LORA_FILE)
        if _is_peft(model) and not os.path.isfile(path):
            wanted = [n for n, p in model.named_parameters() if "lora_" not in n and p.requires_grad]
            if wanted:
                raise ValueError(
                    f"{path} missing: the projector and the other trained non-LoRA weights "
                    f"({len(wanted)} tensors) cannot be restored from this checkpoint"
                )
        if _is_peft(model) and os.path.isfile(path):
            state = torch.load(path, map_location="cpu", weights_only=True)
            result = model.load_state_dict(state, strict=False)
            if result.unexpected_keys:
                raise ValueError(
                    f"{path} holds weights the model does not have: {result.unexpected_keys[:5]}"
                )
            logger.info("restored %d non-LoRA trainable tensors from %s", len(state), path)
