"""What a run reports: ``metrics.csv`` (and TensorBoard), the plan it logs first, the dry run's per-part report,
and whether the processes ended in step."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

from mcm.schedule import lcm_timesteps

ADVERSARIAL_COLUMNS = ("g_loss", "d_loss", "real_logit", "fake_logit", "d_accuracy", "gp", "gp_weight")
VALIDATION_COLUMNS = ("val_consistency_error",)  # filled on --validation-steps steps (training/validation.py)


class MetricsLog:
    """``metrics.csv``, one row per optimizer step (a resumed run first drops the rows logged after its
    checkpoint), and TensorBoard scalars where TensorBoard is installed; only the main process writes."""

    COLUMNS = (
        "step",
        "loss",
        "lr",
        "generated_trajectory_fraction",
        "skipped_samples",
        "seconds",
        *ADVERSARIAL_COLUMNS,
        *VALIDATION_COLUMNS,
    )

    def __init__(self, run_dir: Path, resumed_step: int, enabled: bool = True):
        self.path, self.file, self.writer, self.tb = run_dir / "metrics.csv", None, None, None
        if not enabled:
            return
        truncate_metrics(self.path, resumed_step)
        self.file = open(self.path, "a", newline="")  # noqa: SIM115 - open for the run, closed by close()
        self.writer = csv.writer(self.file)
        if self.path.stat().st_size == 0:
            self.writer.writerow(self.COLUMNS)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"))
        except Exception:  # noqa: BLE001 - TensorBoard is optional
            self.tb = None

    def write(self, step: int, row: dict, adversarial: dict, validation: dict | None = None) -> None:
        """``row``: the step's ``loss``, ``lr``, ``generated`` (trajectory fraction), ``skipped`` (samples) and
        ``seconds``."""
        validation = validation or {}
        loss, lr, generated, skipped, seconds = (row[k] for k in ("loss", "lr", "generated", "skipped", "seconds"))
        if self.writer:
            self.writer.writerow(
                [step, f"{loss:.6g}", f"{lr:.6g}", generated, skipped, round(seconds, 2)]
                + [f"{adversarial[k]:.6g}" if k in adversarial else "" for k in ADVERSARIAL_COLUMNS]
                + [f"{validation[k]:.6g}" if k in validation else "" for k in VALIDATION_COLUMNS]
            )
            self.file.flush()
        if self.tb:
            for key, value in validation.items():
                self.tb.add_scalar(f"validation/{key}", value, step)
            self.tb.add_scalar("loss/consistency", loss, step)
            for key, value in adversarial.items():
                self.tb.add_scalar(f"adversarial/{key}", value, step)
            self.tb.add_scalar("lr", lr, step)

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.tb:
            self.tb.close()


def truncate_metrics(path: Path, step: int) -> None:
    """Drop the rows logged after ``step`` (a run killed after its last checkpoint logged them) and a
    row cut short by the kill (no line end: the resumed run's first row would be glued to it)."""
    if not path.exists():
        return
    rows = path.read_text().splitlines(keepends=True)
    kept = rows[:1] + [
        r for r in rows[1:] if r.endswith("\n") and r.split(",", 1)[0].isdigit() and int(r.split(",", 1)[0]) <= step
    ]
    if kept != rows:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(kept))
        tmp.replace(path)


def processes_in_sync(state, log) -> bool:
    """Whether every process holds the same LoRA (gradients are averaged across processes before each step)."""
    accelerator = state.accelerator
    accelerator.wait_for_everyone()
    checksum = torch.stack([p.detach().double().sum() for p in state.lora_params]).to(accelerator.device)
    checksums = accelerator.gather(checksum.unsqueeze(0))
    in_sync = bool(torch.allclose(checksums, checksums[:1].expand_as(checksums), rtol=1e-6, atol=1e-9))
    if not in_sync:
        log("warning: the LoRA weights differ between processes; gradients were not synchronised")
    return in_sync


def write_dry_run(state, timer, loss, log) -> Path:
    """``dry_run.json``: seconds and peak memory per part of one optimizer step."""
    gib = 2**30
    report = {
        "seconds": {k: round(v, 3) for k, v in timer.seconds.items()},
        "peak_memory_gib": round(getattr(timer, "overall", 0) / gib, 3),
        "peak_memory_gib_per_part": {k: round(v / gib, 3) for k, v in timer.peak_bytes.items()},
        "memory": "CUDA allocated" if torch.cuda.is_available() else "process peak resident set (VmHWM)",
        "loss": loss,
    }
    log(json.dumps(report, indent=2))
    if state.accelerator.is_main_process:
        (state.run_dir / "dry_run.json").write_text(json.dumps(report, indent=2))
    return state.run_dir


def describe_plan(cfg) -> str:
    """What the run will do, in a few lines (``--plan`` prints it and exits; every run logs it)."""
    betas = cfg.beta_schedule + (
        " (the teacher's scheduler config, else scaled_linear)" if cfg.beta_schedule == "auto" else ""
    )
    steps = ", ".join(f"{n}-step ({', '.join(map(str, lcm_timesteps(n).tolist()))})" for n in (1, 2, 4))
    return (
        f"MCM distillation (arXiv 2406.06890)\n"
        f"  teacher {cfg.teacher} ({cfg.teacher_kind}); data {cfg.data}; {cfg.num_frames} frames at "
        f"{cfg.resolution}px\n"
        f"  consistency distillation on the {cfg.num_ddim_timesteps}-point DDIM grid, betas {betas}, "
        f"timestep scaling {cfg.timestep_scaling:g}, teacher w ~ U[{cfg.w_min:g}, {cfg.w_max:g}]\n"
        f"  motion loss on '{cfg.motion_repr}' ({cfg.loss_type}), mixed trajectories λ_real = {cfg.lambda_real:g}\n"
        f"  LoRA rank {cfg.lora_rank}, alpha {cfg.lora_alpha:g}; {cfg.max_train_steps} steps\n"
        f"  the adapter samples with the MCM nodes at {steps}\n"
        + (
            f"  frame discriminator: DINOv2 {cfg.disc_backbone}, {cfg.disc_loss}, λ_adv {cfg.disc_weight:g}, "
            f"{cfg.disc_frames} frames per clip, real = "
            f"{cfg.disc_images if cfg.disc_real == 'images' else 'video frames'}"
            if cfg.disc
            else "  frame discriminator: off (--no-disc)"
        )
    )
