"""The frame adversarial loss in the trainer: sparse frame decoding, generator term, discriminator step.

MCM's second half (paper §3.3, with the official code's choices): a
few frames of the student's consistency output are decoded by the VAE *with* gradient and judged by
a DINOv2-feature discriminator against high-quality images (or frames of the same video batch, the
official distillation-only ``video`` mode). The discriminator has its own optimizer, schedule and
loss scaler, and is updated once per optimizer step (see :class:`Adversary`).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import torch

from mcm.discriminator import (
    AdaptivePenaltyWeight,
    Dinov2Features,
    FrameDiscriminator,
    discriminator_accuracy,
    discriminator_loss,
    feature_gradient_penalty,
    generator_loss,
    r1_penalty,
    sparse_frame_indices,
)
from training.frozen import FrozenParts


def build_backbone(name: str, layers: tuple[int, ...]):
    """``tiny`` or ``tiny:<patch>`` (a random DINOv2 at 56 px with 14-px or ``<patch>``-px patches, for CPU toy
    runs and tests), or a local folder / hub id of a DINOv2 model (which sees 224-px frames, any size)."""
    from transformers import Dinov2Config, Dinov2Model

    if name == "tiny" or name.startswith("tiny:"):
        patch = name.partition(":")[2] or "14"
        if not patch.isdigit() or 56 % int(patch):
            raise ValueError(
                f"--disc-backbone {name}: the tiny backbone's patch size must divide its 56-px input (e.g. 7 or 14)"
            )
        torch.manual_seed(1234)
        config = Dinov2Config(
            hidden_size=32,
            num_hidden_layers=12,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=56,
            patch_size=int(patch),
        )
        return Dinov2Features(Dinov2Model(config), layers, input_size=56)  # the tiny backbone keeps its own size
    try:
        return Dinov2Features.from_pretrained(name, layers)
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(
            f"--disc-backbone {name}: cannot load a DINOv2 model ({exc}); give a local folder, or --no-disc"
        ) from None


class Adversary:
    """Discriminator, its optimizer, schedule and loss scaler, and the adversarial terms of a training step.

    Cadence, as the official code (its D optimizer and scheduler are prepared with accelerate, so they
    step once per gradient sync): one D update per optimizer step, or every ``--disc-update-every``
    optimizer steps. In such a window D's loss on every micro-batch is backpropagated (divided by the
    accumulation steps) and the update uses the window's mean gradient, averaged across processes, so
    N processes train what one process with N x accumulation trains. (The official code wraps D in
    ``accelerator.accumulate`` but zeroes D's gradients at the start of the sync micro-batch's D step,
    so it learns from that micro-batch only; accumulating is what that wrapping intends, and the only
    choice under which N processes and N x accumulation agree.)
    """

    def __init__(self, args, teacher, device, accelerator, lr: float, max_steps: int, generator: torch.Generator):
        """``teacher``: a :class:`training.frozen.FrozenParts` (or a teacher, used without offload);
        ``max_steps``: the run's optimizer steps (the schedule is sized in D updates from it)."""
        layers = tuple(int(i) for i in str(args.disc_layers).split(","))
        backbone = build_backbone(args.disc_backbone, layers)
        self.frozen = teacher if isinstance(teacher, FrozenParts) else FrozenParts(teacher, device, offload=False)
        c_dim = int(self.frozen.teacher.text_encoder.config.hidden_size)
        self.disc = FrameDiscriminator(backbone, c_dim).to(device)
        self.params = list(self.disc.trainable_parameters())
        self.args, self.accelerator, self.generator = args, accelerator, generator
        if self.processes > 1:  # the heads start alike on every process (their init follows each process's seed)
            from accelerate.utils import broadcast

            for t in self.disc.heads.state_dict().values():
                t.copy_(broadcast(t.clone(), from_process=0))
        self.optimizer = torch.optim.AdamW(self.params, lr=lr, betas=(0.9, 0.999), weight_decay=0.0)
        self.every = int(getattr(args, "disc_update_every", 1))
        self.start = int(getattr(args, "disc_start_step", 0))
        if self.every < 1:
            raise ValueError(
                f"--disc-update-every {self.every}: must be at least 1 (optimizer steps per discriminator update)"
            )
        self.total_updates = max(1, math.ceil((max_steps - self.start) / self.every))
        warmup = (
            math.ceil(args.lr_warmup_steps / self.every) if self.start == 0 else 0
        )  # official: no warm-up for a late start
        self.scheduler = clamped_scheduler(args.lr_scheduler, self.optimizer, warmup, self.total_updates)
        # fp16 needs loss scaling (the 1e-5-weighted penalty's gradient underflows without it); bf16 and fp32 do not
        self.scaler = torch.amp.GradScaler(
            torch.device(device).type, enabled=getattr(accelerator, "mixed_precision", "no") == "fp16"
        )
        self.share = 1.0 / int(getattr(args, "gradient_accumulation_steps", 1))
        self.penalty = AdaptivePenaltyWeight(args.disc_gp)
        self.updates, self.skipped, self.window = 0, 0, []
        self.last: dict[str, float] = {}
        self._power = [b for n, b in self.disc.heads.named_buffers() if n.endswith(("weight_u", "weight_v"))]
        self._power_start = [b.clone() for b in self._power]

    @property
    def processes(self) -> int:
        return getattr(self.accelerator, "num_processes", 1) if self.accelerator is not None else 1

    def due(self, step: int) -> bool:
        """Whether the window of optimizer step ``step`` (0-based) trains the discriminator."""
        return step >= self.start and (step - self.start) % self.every == 0

    def text(self, captions: list[str], device=None) -> torch.Tensor:
        """Text conditioning: the teacher's CLIP text encoder, pooled (its width is read from the model)."""
        return self.frozen.encode_text(captions)[1]

    def decode_frames(self, latents: torch.Tensor, index: list[int]) -> torch.Tensor:
        return self.frozen.decode_frames(latents, index)

    def generator_term(
        self, model_pred: torch.Tensor, c_video: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """λ_adv · L_G on ``disc_frames`` decoded frames; returns (term, fake frames, their text embeddings)."""
        self._restart_power_iteration()
        index = sparse_frame_indices(model_pred.shape[2], self.args.disc_frames, self.generator)
        fake = self.decode_frames(model_pred, index)
        c = c_video.repeat_interleave(len(index), dim=0)
        self.disc.heads.requires_grad_(False)  # the generator's loss must not train the discriminator
        try:
            logits = self.disc(fake, c, self.generator, augment=self.args.disc_augment)
        finally:
            self.disc.heads.requires_grad_(True)
        loss = generator_loss(logits, self.args.disc_loss)
        self.last["g_loss"] = loss.item()
        return self.args.disc_weight * loss, fake, c

    def real_from_video(self, video: torch.Tensor) -> torch.Tensor:
        """Official ``video`` mode: k segments of the clip, one random frame from each (TSN sampling)."""
        f, k = video.shape[2], self.args.disc_frames
        bounds = [round(i * f / k) for i in range(k + 1)]
        index = [
            int(torch.randint(bounds[i], max(bounds[i] + 1, bounds[i + 1]), (), generator=self.generator))
            for i in range(k)
        ]
        return video[:, :, index].permute(0, 2, 1, 3, 4).flatten(0, 1)

    def accumulate(
        self,
        real: torch.Tensor,
        c_real: torch.Tensor,
        fake: torch.Tensor,
        c_fake: torch.Tensor,
        share: float | None = None,
    ):
        """D's loss on one micro-batch, backpropagated (through the loss scaler) times ``share``
        (default 1 / accumulation steps) into the heads' gradients; :meth:`update` steps."""
        args, disc = self.args, self.disc
        real_px = disc.preprocess(real, self.generator, args.disc_augment)
        fake_px = disc.preprocess(fake.detach(), self.generator, args.disc_augment)
        with torch.no_grad():  # the backbone is frozen; only the heads need a graph
            real_feats = disc.backbone.features(real_px)
            fake_feats = disc.backbone.features(fake_px)
        real_logits = torch.cat(disc.head_logits(real_feats, c_real), dim=1)
        fake_logits = torch.cat(disc.head_logits(fake_feats, c_fake), dim=1)
        loss = discriminator_loss(real_logits, fake_logits, args.disc_loss)
        gp = torch.zeros(())
        if self.penalty.weight > 0:
            gp = feature_gradient_penalty(disc, real_px, fake_px, c_fake, self.generator)
            loss = loss + self.penalty.weight * gp
        if args.disc_r1 > 0:
            loss = loss + args.disc_r1 * r1_penalty(disc, real_px, c_real)
        share = self.share if share is None else share
        self.scaler.scale(loss if share == 1 else loss * share).backward()
        self.window.append(
            {
                "d_loss": loss.item(),
                "real_logit": real_logits.mean().item(),
                "fake_logit": fake_logits.mean().item(),
                "d_accuracy": discriminator_accuracy(real_logits.detach(), fake_logits.detach()),
                "gp": float(gp.detach()),
            }
        )

    def update(self, step: int) -> bool:
        """One D update from the gradients accumulated since the last one (averaged across processes,
        unscaled; skipped when not finite). Returns whether the heads changed."""
        if not self.window:
            return False
        if self.processes > 1:  # average the heads' gradients across processes (an inf anywhere reaches all)
            for p in self.params:
                if p.grad is not None:
                    p.grad = self.accelerator.reduce(p.grad, reduction="mean")
        self.scaler.unscale_(self.optimizer)
        finite = all(bool(torch.isfinite(p.grad).all()) for p in self.params if p.grad is not None)
        lr = self.optimizer.param_groups[0]["lr"]
        if finite:
            self.scaler.step(self.optimizer)
            self.scheduler.step()
            self.updates += 1
        else:
            self.skipped += 1
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        stats = {k: sum(w[k] for w in self.window) / len(self.window) for k in self.window[0]}
        if self.processes > 1:  # means over all processes' micro-batches: every process adapts the penalty alike
            values = self.accelerator.reduce(
                torch.tensor(list(stats.values()), device=self.params[0].device), reduction="mean"
            )
            stats = dict(zip(stats, values.tolist()))
        self.window = []
        self._power_start = [b.clone() for b in self._power]
        stats["gp_weight"] = self.penalty.update(stats["gp"], step)
        self.last.update(stats, d_lr=lr)
        return finite

    def _restart_power_iteration(self) -> None:
        """Every micro-batch between two D updates starts the spectral norms' power iteration (one iteration
        per forward in training mode) from the same vectors: the weights do not change in between, so each
        micro-batch sees the same normalisation whichever process or accumulation slot runs it (N processes
        = N x accumulation), and a window of one micro-batch is unchanged."""
        for buffer, start in zip(self._power, self._power_start, strict=True):
            buffer.copy_(start)

    def discriminator_step(
        self, real: torch.Tensor, c_real: torch.Tensor, fake: torch.Tensor, c_fake: torch.Tensor, step: int
    ):
        """One micro-batch and one update (a window of one)."""
        self.accumulate(real, c_real, fake, c_fake, share=1.0)
        self.update(step)

    # checkpoints: the state at the start of the open window (one interrupted inside a window resumes at its start)
    def state_dict(self) -> dict:
        # the window's micro-batches advanced the power iteration; its start is what resumes
        self._restart_power_iteration()
        return {
            "heads": self.disc.heads.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "penalty": self.penalty.state_dict(),
            "scaler": self.scaler.state_dict(),
            "updates": self.updates,
            "skipped": self.skipped,
        }

    def load_state_dict(self, state: dict) -> None:
        self.disc.heads.load_state_dict(state["heads"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.penalty.load_state_dict(state["penalty"])
        if state.get("scaler"):  # checkpoints written before the scaler have none
            self.scaler.load_state_dict(state["scaler"])
        self.updates, self.skipped = int(state.get("updates", 0)), int(state.get("skipped", 0))
        self._power_start = [b.clone() for b in self._power]  # the loaded vectors start the next window


def clamped_scheduler(name: str, optimizer, warmup: int, total: int):
    """A diffusers schedule whose factor stays at its step-``total`` value past the end (diffusers'
    cosine would rise again after ``total``)."""
    from diffusers.optimization import get_scheduler

    scheduler = get_scheduler(name, optimizer=optimizer, num_warmup_steps=warmup, num_training_steps=total)
    scheduler.lr_lambdas = [lambda step, f=f: f(min(step, total)) for f in scheduler.lr_lambdas]
    return scheduler


def adversarial_summary(metrics_csv: Path, window: int = 50) -> dict:
    """Mean discriminator accuracy and logits over the first and the last ``window`` logged steps of a
    run's ``metrics.csv`` (resumed runs included): does the discriminator tell real from fake, and does
    that change as the student learns?"""
    with open(metrics_csv, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("d_accuracy")]
    if not rows:
        return {}
    out = {"logged_steps": len(rows)}
    for name, part in (("first", rows[:window]), ("last", rows[-window:])):
        for key in ("d_accuracy", "real_logit", "fake_logit"):
            out[f"{key}_{name}_{window}"] = round(sum(float(r[key]) for r in part) / len(part), 4)
    return out
