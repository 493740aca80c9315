"""The trainer's state: what one run trains and counts, and how a checkpoint saves and restores it.

:class:`TrainState` holds the LoRA student, the motion head and its EMA target head, the EMA student
(``--ema-target``), the optimizer and its scheduler, the adversary (discriminator heads, their optimizer,
scheduler and loss scaler), the counters (optimizer steps, micro-batches, skipped samples by reason) and
the data streams whose positions a checkpoint records with every process's RNG state.

``checkpoint-<step>/`` holds ``adapter.safetensors`` and ``peft/`` (the student, loadable by the nodes),
``trainable_extra.safetensors`` (motion heads, EMA student), ``optimizer.pt`` (optimizer, scheduler,
adversary; pickle-free), ``rng_state.pt``, ``trainer_state.json`` and the manifest
(:func:`training.checkpoints.write_checkpoint`), built in a temporary folder and renamed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file

from training.adversarial import Adversary
from training.checkpoints import (
    CheckpointError,
    load_pickle_free,
    prune,
    rng_state,
    set_aside_newer,
    set_rng_state,
    write_checkpoint,
)
from training.config import TrainConfig
from training.data import Batches
from training.export import export_adapter
from training.models import Teacher

if TYPE_CHECKING:  # only for the annotations: accelerate is imported where a run is set up
    from accelerate import Accelerator


@dataclass
class TrainState:
    """Everything a run trains and counts; :meth:`save` and :meth:`load` are its checkpoints."""

    accelerator: Accelerator
    args: TrainConfig
    teacher: Teacher  # frozen; only its adapter metadata is saved
    student: torch.nn.Module  # the peft LoRA student as prepared by accelerate (wrapped on several processes)
    head: torch.nn.Module | Callable  # the motion head (prepared) or a fixed motion representation
    target_head: torch.nn.Module | Callable  # the head's EMA copy, the target's motion representation
    ema_student: torch.nn.Module | None  # the EMA student (--ema-target)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    lora_params: list[torch.nn.Parameter]
    modules: list[torch.nn.Module]  # what accelerator.accumulate wraps
    loader: Batches  # the video batches
    run_dir: Path
    adversary: Adversary | None = None  # --disc
    images: Batches | None = None  # the discriminator's real images (--disc-real images)
    global_step: int = 0  # optimizer steps taken
    micro_batches: int = 0  # micro-batches run by this process (skipped windows included)
    skip_reasons: dict = field(default_factory=dict)  # skipped samples at the resume point, all processes
    skip_local: dict = field(default_factory=dict)  # skipped samples this process has read since it started
    nonfinite_run: int = 0  # optimizer steps in a row skipped for a non-finite loss or gradient
    lr_seen: dict = field(default_factory=dict)  # the learning rates at the start, middle and end (summary.json)
    start_time: float = field(default_factory=time.time)
    #: where the last gradient sync left this process (micro-batches, data positions, skip counts, RNG states):
    #: what a checkpoint records, so that one written inside an accumulation window (Ctrl-C, the data stopping)
    #: resumes at the window's start, whose micro-batches are then read again, as the uninterrupted run reads them
    sync_point: dict | None = None

    @property
    def unwrapped(self):
        return self.accelerator.unwrap_model(self.student)

    def seconds(self) -> float:
        return time.time() - self.start_time

    # --- skipped samples: counted here only ----------------------------------------------------------

    def count_skips(self, batch: dict) -> None:
        """Add a batch's skipped samples (``batch["skip_reasons"]``, by reason) to this process's counts."""
        for reason, n in batch["skip_reasons"].items():
            self.skip_local[reason] = self.skip_local.get(reason, 0) + n

    def skip_counts(self, local: dict | None = None) -> dict:
        """Skip reasons summed over processes (the local counts, or ``local``, plus those at the resume point);
        every process calls it."""
        from accelerate.utils import gather_object

        local = dict(self.skip_local if local is None else local)
        merged = dict(self.skip_reasons)
        for part in gather_object([local]) if self.accelerator.num_processes > 1 else [local]:
            for k, v in part.items():
                merged[k] = merged.get(k, 0) + v
        return merged

    # --- checkpoints ---------------------------------------------------------------------------------

    def mark_sync(self) -> None:
        """Record this process's position at a gradient sync (at the start, and after every optimizer step or
        skipped window); :meth:`save` writes it."""
        self.sync_point = self._position()

    def _position(self) -> dict:
        """Where this process is now: micro-batches, data positions, skip counts and RNG states."""
        return {
            "micro_batches": self.micro_batches,
            "data": self.loader.position,
            "images": self.images.position if self.images else 0,
            "skip_local": dict(self.skip_local),
            "rng": rng_state(),
        }

    def checkpoint(self, log) -> None:
        """:meth:`save` at the current step; a failed write stops the run or, by default, warns
        (``--on-save-error``)."""
        try:
            self.save(log)
        except CheckpointError as exc:
            if self.args.on_save_error == "stop":
                raise
            log(f"warning: {exc}; the earlier checkpoints are intact; training goes on (--on-save-error stop to stop)")

    def save(self, log=print) -> None:
        """``checkpoint-<global_step>/`` (only trainable state: the frozen teacher would be gigabytes per
        checkpoint). A failed write raises :class:`training.checkpoints.CheckpointError` on every process."""
        from accelerate.utils import broadcast_object_list, gather_object

        accelerator, args, world = self.accelerator, self.args, self.accelerator.num_processes
        sync = self.sync_point or self._position()
        mine = (sync["data"], sync["images"], sync["rng"])
        parts = gather_object([mine]) if world > 1 else [mine]
        extra = {
            "micro_batches": sync["micro_batches"],
            "skip_reasons": self.skip_counts(sync["skip_local"]),
            "data_positions": [p[0] for p in parts],
            "image_positions": [p[1] for p in parts],
            "num_processes": world,
            "train_batch_size": args.train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "nonfinite_run": self.nonfinite_run,
            "learning_rates_seen": self.lr_seen,
        }
        step, seconds = self.global_step, self.seconds()
        accelerator.wait_for_everyone()
        final = self.run_dir / f"checkpoint-{step}"
        error = ""
        if accelerator.is_main_process and not final.exists():
            state = {"global_step": step, "skipped": sum(extra["skip_reasons"].values()), **extra, "args": vars(args)}
            try:
                write_checkpoint(final, lambda tmp: self._write_parts(tmp, seconds), state, [p[2] for p in parts])
                prune(self.run_dir, args.checkpoints_total_limit, log)
            except CheckpointError as exc:
                error = str(exc)
        if world > 1:
            error = broadcast_object_list([error])[0]
        accelerator.wait_for_everyone()
        if error:
            raise CheckpointError(error)

    def _write_parts(self, tmp: Path, seconds: float) -> None:
        from peft import get_peft_model_state_dict

        export_adapter(self.unwrapped, self.teacher, self.args, self.global_step, tmp, seconds)
        heads = {}
        if isinstance(self.target_head, torch.nn.Module):
            heads.update({f"online.{k}": v for k, v in self.accelerator.unwrap_model(self.head).state_dict().items()})
            heads.update({f"target.{k}": v for k, v in self.target_head.state_dict().items()})
        if self.ema_student is not None:
            heads.update({f"ema_student.{k}": v for k, v in get_peft_model_state_dict(self.ema_student).items()})
        if heads:
            save_file(
                {k: v.detach().contiguous().cpu() for k, v in heads.items()}, str(tmp / "trainable_extra.safetensors")
            )
        scaler = self.accelerator.scaler  # the generator's fp16 loss scaler (None without fp16)
        torch.save(
            {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "adversary": self.adversary.state_dict() if self.adversary is not None else None,
            },
            tmp / "optimizer.pt",
        )

    def load(self, folder: Path, trainer_state: dict, rngs: list | None, log=print) -> None:
        """Continue from a verified checkpoint (``trainer_state``, ``rngs``: :func:`training.checkpoints.read_state`):
        the models, optimizers and counters, then this process's RNG state; the newer checkpoints are set aside.
        A checkpoint of another model or flags is a ValueError naming it, raised before anything is moved."""
        self._load_models(folder)
        if self.accelerator.is_main_process:
            set_aside_newer(folder, log)
        self.global_step = trainer_state["global_step"]
        self.micro_batches = trainer_state.get("micro_batches", 0)
        self.skip_reasons = trainer_state.get("skip_reasons", {})
        self.nonfinite_run = trainer_state.get("nonfinite_run", 0)
        self.lr_seen = dict(trainer_state.get("learning_rates_seen", {}))
        if rngs is not None:
            set_rng_state(rngs[self.accelerator.process_index])
        log(f"resumed from {folder} at step {self.global_step} (data position {trainer_state.get('data_positions')})")

    def _load_models(self, folder: Path) -> None:
        extra_path = folder / "trainable_extra.safetensors"
        extra = load_file(extra_path) if extra_path.exists() else {}
        state = load_pickle_free(folder / "optimizer.pt")
        if self.adversary is not None and state.get("adversary") is None:
            raise ValueError(
                f"--resume {folder}: the checkpoint has no discriminator state (it was trained with --no-disc)"
            )
        try:
            self._load_parts(folder, extra, state)
        except (KeyError, RuntimeError, TypeError, ValueError) as exc:  # shapes or keys of another configuration
            raise ValueError(
                f"--resume {folder}: does not fit this run's model and flags (written with other --lora-rank, "
                f"--motion-repr, --ema-target or optimizer flags?): {str(exc).strip().splitlines()[0][:200]}"
            ) from None

    def _load_parts(self, folder: Path, extra: dict, state: dict) -> None:
        from peft import set_peft_model_state_dict

        def part(prefix):
            return {k[len(prefix) :]: v for k, v in extra.items() if k.startswith(prefix)}

        set_peft_model_state_dict(self.unwrapped, load_file(folder / "peft" / "adapter_model.safetensors"))
        if isinstance(self.target_head, torch.nn.Module):
            self.accelerator.unwrap_model(self.head).load_state_dict(part("online."))
            self.target_head.load_state_dict(part("target."))
        if self.ema_student is not None:
            set_peft_model_state_dict(self.ema_student, part("ema_student."))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.accelerator.scaler is not None and state.get(
            "scaler"
        ):  # older checkpoints hold none: the scale starts afresh
            self.accelerator.scaler.load_state_dict(state["scaler"])
        if self.adversary is not None:
            self.adversary.load_state_dict(state["adversary"])
