"""Train the toy teacher that the embedded default distils (shipped in ``training/toy/teacher/``).

The toy teacher is a real AnimateDiff-class model, only small: a diffusers ``UNet2DConditionModel`` +
``MotionAdapter`` (sampled as ``UNetMotionModel``), an ``AutoencoderKL`` and a transformers
``CLIPTextModel`` with a ``CLIPTokenizer`` built here from the toy captions. It is saved as a diffusers
folder (``unet/``, ``motion_adapter/``, ``vae/``, ``text_encoder/``, ``tokenizer/``), so the default run
loads it through the same code as Stable Diffusion + AnimateDiff.

It learns from the *degraded* toy videos (blur, noise, low contrast, a watermark-like bar), as
AnimateDiff learned from WebVid; the clean toy images are what the distilled student's discriminator
sees. The stages train on synthetic clips generated on the fly:

1. the VAE on single frames, clean and degraded (so that clean frames can be decoded too), then its
   ``scaling_factor`` is set to 1 / std of the latents, as Stable Diffusion's was chosen;
2. the UNet (spatial + motion) and the text encoder together, ε-prediction on diffusers
   ``scaled_linear`` betas (the schedule MCM distils with), 10% empty captions for classifier-free
   guidance, min-SNR weighting, an EMA of the weights (what is saved); ``--train`` and
   ``--freeze-text`` restrict a stage to part of the weights.

The toy world comes in three versions (``--world``: plain, marked, tied; :mod:`training.toy.world`). The
shipped teacher was trained in eleven stages across them, ending on the tied world (about 4.2 hours on an idle
2-core CPU); ``training/toy/RESULTS.md`` gives the commands that reproduce it and what each stage changed.
The settings of every stage are written to ``toy_teacher.json`` next to the weights.

    python training/toy/train_teacher.py --out my_teacher            # a teacher from scratch (one stage)
    python training/toy/train_teacher.py --evaluate training/toy/teacher   # score the shipped teacher
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mcm.schedule import NoiseSchedule  # noqa: E402
from training.toy.preset import PRESET, TEACHER  # noqa: E402
from training.toy.probes import evaluate_teacher  # noqa: E402
from training.toy.toy_models import (  # noqa: E402
    build_models,
    build_tokenizer,
    encode_captions,
    encode_video,
    load_models,
    save_teacher,
    toy_batch,
)
from training.toy.world import WORLDS  # noqa: E402


def train_vae(
    vae, steps: int, batch: int, lr: float, rng: random.Random, log_every: int = 100, world: str = "tied"
) -> float:
    """Reconstruction (L1 + MSE) with a small KL term on single frames, half clean, half degraded."""
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    vae.train()
    for step in range(1, steps + 1):
        clean, _ = toy_batch(rng, batch // 2, 1, 32, degraded=False, world=world)
        dirty, _ = toy_batch(rng, batch - batch // 2, 1, 32, degraded=True, world=world)
        x = torch.cat([clean, dirty])[:, :, 0]
        post = vae.encode(x).latent_dist
        recon = vae.decode(post.sample()).sample
        loss = F.l1_loss(recon, x) + F.mse_loss(recon, x) + 1e-6 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % log_every == 0 or step == steps:
            print(f"vae {step}/{steps} loss {loss.item():.4f}", flush=True)
    vae.eval()
    with torch.no_grad():
        x = torch.cat([toy_batch(rng, 64, 1, 32, degraded=d, world=world)[0][:, :, 0] for d in (False, True)])
        std = vae.encode(x).latent_dist.mean.std().item()
    vae.register_to_config(scaling_factor=1.0 / std)
    return 1.0 / std


def train_unet(unet, text, vae, tokenizer, args, rng: random.Random) -> dict:
    schedule = NoiseSchedule("scaled_linear")
    abar = schedule.alphas_cumprod.float()
    if args.freeze_text:
        text.requires_grad_(False)
    for (
        name,
        prm,
    ) in unet.named_parameters():  # --train: the spatial layers (an image stage), the motion modules, or all
        prm.requires_grad_(args.train == "all" or (args.train == "motion") == ("motion_modules" in name))
    params = [p for p in unet.parameters() if p.requires_grad] + ([] if args.freeze_text else list(text.parameters()))
    motion = [p for n, p in unet.named_parameters() if "motion_modules" in n]
    motion_ids = {id(p) for p in motion}
    groups = [
        {"params": [p for p in params if id(p) not in motion_ids], "scale": 1.0},
        {"params": motion, "scale": args.motion_lr_mult},
    ]
    opt = torch.optim.AdamW(groups, lr=args.lr, weight_decay=0.0)
    ema = [p.detach().clone() for p in params]
    unet.train()
    text.train(not args.freeze_text)
    start, losses = time.time(), []
    last = min(args.steps, args.stop_after or args.steps)
    for step in range(1, last + 1):
        video, captions = toy_batch(rng, args.batch, args.frames, 32, world=args.world)
        captions = ["" if rng.random() < args.uncond_prob else c for c in captions]
        with torch.no_grad():
            z0 = encode_video(vae, video)
        cond = encode_captions(text, tokenizer, captions)
        t = torch.randint(args.t_min, 1000, (z0.shape[0],))
        noise = torch.randn_like(z0)
        a = abar[t].view(-1, 1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        eps = unet(zt, t, encoder_hidden_states=cond.repeat_interleave(args.frames, 0)).sample
        snr = abar[t] / (1 - abar[t])
        weight = torch.clamp(snr, max=args.min_snr) / snr  # min-SNR-γ for ε-prediction
        weight = weight * torch.clamp(
            1 / snr, min=1.0, max=args.high_noise_weight
        )  # toward x0-space error where SNR < 1
        loss = (weight * ((eps - noise) ** 2).mean(dim=(1, 2, 3, 4))).mean()
        lr = args.lr * min(1.0, step / args.warmup) * (0.5 * (1 + math.cos(math.pi * step / args.steps)) * 0.9 + 0.1)
        for group in opt.param_groups:
            group["lr"] = lr * group["scale"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema, params):
                e.lerp_(p, 1 - decay)
        losses.append(loss.item())
        if step % args.log_every == 0 or step == args.steps:
            rate = step / (time.time() - start)
            print(
                f"unet {step}/{args.steps} loss {np.mean(losses[-args.log_every :]):.4f} lr {lr:.2e} "
                f"{rate:.2f} it/s, {(args.steps - step) / rate / 60:.1f} min left",
                flush=True,
            )
        if args.save_every and step % args.save_every == 0 and step < last:
            _save_ema(args, unet, vae, text, tokenizer, params, ema, step, losses)
    _save_ema(args, unet, vae, text, tokenizer, params, ema, last, losses)
    return {"final_loss": float(np.mean(losses[-200:])), "seconds": time.time() - start}


def _save_ema(args, unet, vae, text, tokenizer, params, ema, step, losses):
    live = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, e in zip(params, ema):
            p.copy_(e)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "history")}
    settings.update(step=step, loss_last_200=float(np.mean(losses[-200:])), torch=torch.__version__)
    settings = {**settings, "stages": [*args.history, {k: v for k, v in settings.items() if k != "stages"}]}
    save_teacher(Path(args.out), unet, vae, text, tokenizer, settings)
    with torch.no_grad():
        for p, v in zip(params, live):
            p.copy_(v)
    print(f"saved the EMA weights of step {step} to {args.out}", flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(TEACHER), help="diffusers folder to write (default: the shipped one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--vae-steps", type=int, default=1500)
    p.add_argument("--vae-batch", type=int, default=32)
    p.add_argument("--vae-lr", type=float, default=1e-3)
    p.add_argument("--steps", type=int, default=4000, help="UNet + text encoder steps")
    p.add_argument("--batch", type=int, default=4, help="clips per step")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument(
        "--stop-after", type=int, default=None, help="stop (and save) after this many steps of the --steps schedule"
    )
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--min-snr", type=float, default=5.0)
    p.add_argument("--uncond-prob", type=float, default=0.1)
    p.add_argument(
        "--t-min",
        type=int,
        default=0,
        help="train on timesteps [t-min, 1000) only (layout and motion live at high noise)",
    )
    p.add_argument(
        "--high-noise-weight",
        type=float,
        default=1.0,
        help="where SNR < 1, weight the ε loss by min(1/SNR, this): the x0-space error, capped (1: off)",
    )
    p.add_argument(
        "--init", default=None, help="continue from a saved toy teacher folder (its VAE is kept; no VAE stage)"
    )
    p.add_argument("--motion-lr-mult", type=float, default=1.0, help="learning-rate multiplier of the motion modules")
    p.add_argument(
        "--fresh-text",
        action="store_true",
        help="with --init: start the text encoder afresh (from --seed) instead of continuing the saved one",
    )
    p.add_argument("--freeze-text", action="store_true", help="do not train the text encoder")
    p.add_argument(
        "--train",
        choices=("all", "spatial", "motion"),
        default="all",
        help=(
            "UNet weights to train: all, the spatial layers only (an image stage, with --frames 1) or the motion "
            "modules only"
        ),
    )
    p.add_argument(
        "--world",
        choices=WORLDS,
        default="tied",
        help="toy world to train on: tied (a stripe on the leading side, the direction set by the colour and the speed "
        "by the shape; what the default run distils on), marked (the direction drawn apart from the colour) or "
        "plain (no stripe, no tie: the world of the first two stages)",
    )
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument(
        "--save-every", type=int, default=500, help="write the EMA weights every N steps (0: only at the end)"
    )
    p.add_argument(
        "--evaluate",
        default=None,
        metavar="FOLDER",
        help=(
            "score a saved toy teacher (which caption words it uses; motion and frame quality of its DDIM + CFG "
            "samples) and exit"
        ),
    )
    p.add_argument(
        "--eval-guidance",
        type=float,
        default=None,
        help="CFG scale of --evaluate (default: the default run's, 1 + mean w)",
    )
    p.add_argument(
        "--eval-steps", default="50", help="DDIM step counts that --evaluate samples, comma-separated (empty: none)"
    )
    p.add_argument(
        "--eval-seeds", type=int, default=6, help="noises per prompt that --evaluate samples (8 prompts each)"
    )
    return p


def main(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    if args.eval_seeds < 1:
        p.error(f"--eval-seeds must be at least 1 (noises per prompt), got {args.eval_seeds}")
    if args.fresh_text and not args.init:
        p.error("--fresh-text needs --init (a run without --init builds every model afresh anyway)")
    if args.evaluate:
        if args.eval_guidance is None:
            args.eval_guidance = 1.0 + (PRESET["w_min"] + PRESET["w_max"]) / 2
        steps = [int(n) for n in args.eval_steps.split(",") if n.strip()]
        return evaluate_teacher(Path(args.evaluate), args.eval_guidance, steps, args.seed, args.eval_seeds)
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    tokenizer = build_tokenizer()
    if args.init:
        unet, vae, text, previous = load_models(Path(args.init), tokenizer)
        args.history = previous.get("stages", [{k: v for k, v in previous.items() if k != "stages"}])
        if args.fresh_text:
            text = build_models(tokenizer, args.seed)[2]
        torch.manual_seed(args.seed)
    else:
        unet, vae, text = build_models(tokenizer, args.seed)
        args.history = []
    print(
        f"toy teacher: UNet {sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M, VAE "
        f"{sum(p.numel() for p in vae.parameters()) / 1e6:.2f}M, text "
        f"{sum(p.numel() for p in text.parameters()) / 1e6:.3f}M "
        f"parameters; vocabulary {len(tokenizer)}",
        flush=True,
    )
    if not args.init:
        t0 = time.time()
        scale = train_vae(vae, args.vae_steps, args.vae_batch, args.vae_lr, rng, world=args.world)
        print(f"vae: {time.time() - t0:.0f} s, scaling_factor {scale:.4f}", flush=True)
    for prm in vae.parameters():
        prm.requires_grad_(False)
    report = train_unet(unet, text, vae, tokenizer, args, rng)
    print(f"done: {json.dumps(report)}", flush=True)


if __name__ == "__main__":
    main()


if __name__ == "__main__":
    main()
