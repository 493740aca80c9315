"""The frame adversarial loss in the trainer: sparse frame decoding, generator term, discriminator step.

MCM's second half (paper §3.3; official choices in ``notes/mcm-algorithm.md`` §3 steps 14–16, §4): a
few frames of the student's consistency output are decoded by the VAE *with* gradient and judged by
a DINOv2-feature discriminator against high-quality images (or frames of the same video batch, the
official distillation-only ``video`` mode). The discriminator has its own optimizer and is stepped
right after the generator, on the same micro-batch.
"""

from __future__ import annotations

import csv
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


def build_backbone(name: str, layers: tuple[int, ...]):
    """``tiny`` or ``tiny:<patch>`` (a random DINOv2 at 56 px with 14-px or ``<patch>``-px patches, for CPU toy
    runs and tests), or a local folder / hub id of a DINOv2 model."""
    from transformers import Dinov2Config, Dinov2Model

    if name == "tiny" or name.startswith("tiny:"):
        patch = name.partition(":")[2] or "14"
        if not patch.isdigit() or 56 % int(patch):
            raise ValueError(f"--disc-backbone {name}: the tiny backbone's patch size must divide its 56-px input (e.g. 7 or 14)")
        torch.manual_seed(1234)
        config = Dinov2Config(hidden_size=32, num_hidden_layers=12, num_attention_heads=2, intermediate_size=64,
                              image_size=56, patch_size=int(patch))  # fmt: skip
        return Dinov2Features(Dinov2Model(config), layers)
    try:
        return Dinov2Features.from_pretrained(name, layers)
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(
            f"--disc-backbone {name}: cannot load a DINOv2 model ({exc}); give a local folder, or --no-disc"
        ) from None


class Adversary:
    """Discriminator, its optimizer and schedule, and the adversarial terms of one training step."""

    def __init__(self, args, teacher, device, accelerator, lr: float, max_steps: int, generator: torch.Generator):
        from diffusers.optimization import get_scheduler

        layers = tuple(int(i) for i in str(args.disc_layers).split(","))
        backbone = build_backbone(args.disc_backbone, layers)
        c_dim = int(teacher.text_encoder.config.hidden_size)
        self.disc = FrameDiscriminator(backbone, c_dim).to(device)
        self.params = list(self.disc.trainable_parameters())
        self.optimizer = torch.optim.AdamW(self.params, lr=lr, betas=(0.9, 0.999), weight_decay=0.0)
        self.scheduler = get_scheduler(args.lr_scheduler, optimizer=self.optimizer, num_warmup_steps=args.lr_warmup_steps,
                                       num_training_steps=max_steps)  # fmt: skip
        self.penalty = AdaptivePenaltyWeight(args.disc_gp)
        self.args, self.teacher, self.accelerator, self.generator = args, teacher, accelerator, generator
        self.last: dict[str, float] = {}

    # text conditioning: the teacher's CLIP text encoder, pooled (its width is read from the model)
    @torch.no_grad()
    def text(self, captions: list[str], device) -> torch.Tensor:
        out = self.teacher.text_encoder(self.teacher.tokenizer(captions).to(device))
        return out.pooler_output.float()

    def decode_frames(self, latents: torch.Tensor, index: list[int]) -> torch.Tensor:
        """Decode only frames ``index`` of ``(b, c, f, h, w)`` latents, keeping the graph to the latents."""
        vae = self.teacher.vae
        picked = latents[:, :, index].permute(0, 2, 1, 3, 4).flatten(0, 1)
        return vae.decode((picked / self.teacher.scaling_factor).to(vae.dtype)).sample.float()

    def generator_term(self, model_pred: torch.Tensor, c_video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """λ_adv · L_G on ``disc_frames`` decoded frames; returns (term, fake frames, their text embeddings)."""
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
        index = [int(torch.randint(bounds[i], max(bounds[i] + 1, bounds[i + 1]), (), generator=self.generator)) for i in range(k)]
        return video[:, :, index].permute(0, 2, 1, 3, 4).flatten(0, 1)

    def discriminator_step(self, real: torch.Tensor, c_real: torch.Tensor, fake: torch.Tensor, c_fake: torch.Tensor, step: int):
        args, disc = self.args, self.disc
        self.optimizer.zero_grad(set_to_none=True)
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
        loss.backward()
        if self.accelerator.num_processes > 1:  # average the heads' gradients across processes
            for p in self.params:
                if p.grad is not None:
                    p.grad = self.accelerator.reduce(p.grad, reduction="mean")
        self.optimizer.step()
        self.scheduler.step()
        gp = float(gp.detach())
        weight = self.penalty.update(gp, step)
        self.last.update({"d_loss": loss.item(), "real_logit": real_logits.mean().item(), "fake_logit": fake_logits.mean().item(),
                          "d_accuracy": discriminator_accuracy(real_logits.detach(), fake_logits.detach()),
                          "gp": gp, "gp_weight": weight})  # fmt: skip

    # checkpoints
    def state_dict(self) -> dict:
        return {"heads": self.disc.heads.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "penalty": self.penalty.state_dict()}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        self.disc.heads.load_state_dict(state["heads"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.penalty.load_state_dict(state["penalty"])


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
