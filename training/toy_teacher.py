"""Train the toy teacher that the embedded default distils (shipped in ``training/toy_teacher/``).

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

The toy world comes in three versions (``--world``). In the *plain* one a direction word is the only
sign of where a shape goes; the teacher trained on it alone learned colours, shapes and the
degradations but ignored the motion words. In the *marked* one the motion can be read off every frame:
a white stripe on the shape's leading side, and the shape sets the speed (squares slowly, circles
quickly); the teacher continued on it learned the stripe but still not the direction words (its UNet's
prediction did not change when the direction word was swapped). The *tied* one (the default, and what
the default run distils on) also gives each colour its direction (red right, green left, blue up,
yellow down), so the motion hangs on words the UNet already draws, the colour and the shape, as in
real video, where what a thing is tells much of how it moves.

Reproduce the shipped weights (eleven runs, about 4.2 hours on an idle 2-core CPU). The first two train
everything on the plain world; the next three move to the marked world the AnimateDiff way: a fresh,
frozen text encoder (the trained one had lost the direction words), an image stage (single frames, 32
captions a step) that maps the words to colour, shape and stripe, then all weights on video with the
motion modules' learning rate raised. The last six train on the tied world, the last five with the
loss weighted towards the noisiest timesteps (``--high-noise-weight``), where a sample's layout, and
so its motion, is decided: before them the teacher's prediction hardly depended on the frames' order
there (shuffling the frames of a noised clip raised its error by 8% at t=950, against 2.0x at t=500)::

    python training/toy_teacher.py --world plain --out stage1 --vae-steps 1000 --steps 3500 --save-every 500
    python training/toy_teacher.py --world plain --init stage1 --out stage2 --steps 1800 --stop-after 900 \
        --lr 5e-4 --warmup 50 --motion-lr-mult 3 --seed 1 --save-every 300
    python training/toy_teacher.py --world marked --init stage2 --out stage3 --fresh-text --freeze-text --steps 3000 \
        --stop-after 1000 --lr 7e-4 --warmup 100 --motion-lr-mult 2 --seed 12 --threads 2
    python training/toy_teacher.py --world marked --init stage3 --out stage4 --freeze-text --train spatial --frames 1 \
        --batch 32 --steps 1000 --lr 1e-3 --warmup 50 --seed 13 --threads 2
    python training/toy_teacher.py --world marked --init stage4 --out stage5 --freeze-text --steps 1500 \
        --lr 3e-4 --warmup 50 --motion-lr-mult 3 --seed 14 --threads 2
    python training/toy_teacher.py --init stage5 --out stage6 --freeze-text --steps 3000 --stop-after 1000 \
        --lr 5e-4 --warmup 50 --motion-lr-mult 3 --seed 15 --threads 2
    python training/toy_teacher.py --init stage6 --out stage7 --freeze-text --steps 2500 \
        --lr 4e-4 --warmup 50 --motion-lr-mult 3 --high-noise-weight 8 --seed 16 --threads 2
    python training/toy_teacher.py --init stage7 --out stage8 --freeze-text --steps 1000 \
        --lr 3e-4 --warmup 50 --motion-lr-mult 3 --high-noise-weight 20 --seed 17 --threads 2
    python training/toy_teacher.py --init stage8 --out stage9 --freeze-text --steps 1500 \
        --lr 3e-4 --warmup 50 --motion-lr-mult 3 --high-noise-weight 20 --seed 18 --threads 2
    python training/toy_teacher.py --init stage9 --out stage10 --freeze-text --steps 1500 \
        --lr 3e-4 --warmup 50 --motion-lr-mult 3 --high-noise-weight 20 --seed 19 --threads 2
    python training/toy_teacher.py --init stage10 --out training/toy_teacher --freeze-text --steps 1500 \
        --lr 3e-4 --warmup 50 --motion-lr-mult 3 --high-noise-weight 20 --seed 20 --threads 2

The settings of every stage are written to ``toy_teacher.json`` next to the weights.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sys
import time
from collections import Counter
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mcm.boundary import predicted_x0
from mcm.schedule import NoiseSchedule
from training.data import COLOURS, DIRECTION_COLOURS, DIRECTIONS, SHAPES, WORLDS, select_clip, toy_clip

SHIPPED = Path(__file__).resolve().parent / "toy_teacher"
CLIP_FRAMES = 16  # toy clips are generated this long; training windows are cut from them like the trainer does

UNET_CONFIG = dict(
    block_out_channels=(32, 64),
    layers_per_block=1,
    cross_attention_dim=32,
    attention_head_dim=8,
    norm_num_groups=8,
    sample_size=16,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
)
MOTION_CONFIG = dict(
    block_out_channels=(32, 64),
    motion_layers_per_block=1,
    motion_norm_num_groups=8,
    motion_num_attention_heads=2,
    motion_max_seq_length=32,
)
VAE_CONFIG = dict(
    block_out_channels=(16, 32),
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    latent_channels=4,
    norm_num_groups=8,
    sample_size=32,
)
TEXT_CONFIG = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2)


# --- tokenizer -------------------------------------------------------------------------------------


def toy_words() -> list[str]:
    return sorted({"a", "moving", "slowly", "quickly", *COLOURS, *DIRECTIONS, *SHAPES})


def _byte_alphabet() -> list[str]:
    """CLIP's byte-to-unicode alphabet: printable bytes as themselves, the rest shifted past 255."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(extra))]


def _learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """Byte-pair merges, learned the usual way (most frequent adjacent pair first) until every word is
    one token; encoding a word replays them in this order and so ends at the whole word."""
    pieces = {w: [*w[:-1], w[-1] + "</w>"] for w in words}
    merges = []
    while any(len(p) > 1 for p in pieces.values()):
        pairs = Counter((p[i], p[i + 1]) for p in pieces.values() for i in range(len(p) - 1))
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        for w, p in pieces.items():
            out, i = [], 0
            while i < len(p):
                if i + 1 < len(p) and (p[i], p[i + 1]) == best:
                    out.append(p[i] + p[i + 1])
                    i += 2
                else:
                    out.append(p[i])
                    i += 1
            pieces[w] = out
    return merges


def build_tokenizer():
    """A ``CLIPTokenizer`` over CLIP's byte alphabet with whole-word tokens for the toy vocabulary (any
    other text falls back to characters)."""
    from transformers import CLIPTokenizer

    alphabet = _byte_alphabet()
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab.update({ch + "</w>": len(alphabet) + i for i, ch in enumerate(alphabet)})
    merges = _learn_merges(toy_words())
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=list(merges), model_max_length=77)


# --- models ----------------------------------------------------------------------------------------


def build_models(tokenizer, seed: int = 0):
    from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel, UNetMotionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNetMotionModel.from_unet2d(UNet2DConditionModel(**UNET_CONFIG), MotionAdapter(**MOTION_CONFIG))
    vae = AutoencoderKL(**VAE_CONFIG)
    text = CLIPTextModel(
        CLIPTextConfig(
            **TEXT_CONFIG,
            vocab_size=len(tokenizer),
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    return unet, vae, text


def load_models(path: Path, tokenizer):
    """The models of a saved toy teacher folder (to continue training it)."""
    from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel, UNetMotionModel
    from transformers import CLIPTextModel

    path = Path(path)
    unet = UNetMotionModel.from_unet2d(
        UNet2DConditionModel.from_pretrained(path / "unet"), MotionAdapter.from_pretrained(path / "motion_adapter")
    )
    history = json.loads((path / "toy_teacher.json").read_text())
    return (
        unet,
        AutoencoderKL.from_pretrained(path / "vae"),
        CLIPTextModel.from_pretrained(path / "text_encoder"),
        history,
    )


def save_teacher(out: Path, unet, vae, text, tokenizer, settings: dict) -> None:
    """Write the diffusers folder atomically (a temporary folder, then a rename; an existing folder is
    moved aside only once the new one is complete)."""
    from diffusers import MotionAdapter, UNet2DConditionModel

    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    state = unet.state_dict()
    unet2d = UNet2DConditionModel(**UNET_CONFIG)
    unet2d.load_state_dict({k: v for k, v in state.items() if "motion_modules" not in k}, strict=True)
    adapter = MotionAdapter(**MOTION_CONFIG)
    adapter_state = {k: v for k, v in state.items() if "motion_modules" in k}
    missing, unexpected = adapter.load_state_dict(adapter_state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"motion module keys do not line up: missing {missing[:3]}, unexpected {unexpected[:3]}")
    unet2d.save_pretrained(tmp / "unet")
    adapter.save_pretrained(tmp / "motion_adapter")
    vae.save_pretrained(tmp / "vae")
    text.save_pretrained(tmp / "text_encoder")
    tokenizer.save_pretrained(tmp / "tokenizer")
    (tmp / "toy_teacher.json").write_text(json.dumps(settings, indent=2) + "\n")
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old)
    else:
        tmp.rename(out)


# --- data ------------------------------------------------------------------------------------------


def toy_batch(
    rng: random.Random, batch: int, frames: int, size: int, degraded: bool = True, world: str = "tied"
) -> tuple[torch.Tensor, list[str]]:
    """``batch`` clips ``[b, 3, frames, size, size]`` in [-1, 1] cut from fresh 16-frame toy clips the way
    the trainer cuts them (random window, random-resized crop); ``world``: the toy world (see
    :func:`training.data.toy_clip`)."""
    clips, captions = [], []
    for _ in range(batch):
        clip, caption = toy_clip(rng.randrange(1 << 30), CLIP_FRAMES, size, degraded, world)
        clips.append(select_clip(clip, frames, 1, size, "random", rng))
        captions.append(caption)
    return torch.stack(clips), captions


# --- training --------------------------------------------------------------------------------------


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


def encode_captions(text, tokenizer, captions: list[str]) -> torch.Tensor:
    """Per-token CLIP embeddings ``[b, 77, d]`` of ``captions`` (the UNet's conditioning)."""
    ids = tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    return text(ids).last_hidden_state


def encode_video(vae, video: torch.Tensor) -> torch.Tensor:
    """``[b, 3, f, h, w]`` pixels → ``[b, 4, f, h/2, w/2]`` scaled latents (posterior mean)."""
    b, _, f = video.shape[:3]
    frames = video.transpose(1, 2).flatten(0, 1)
    z = vae.encode(frames).latent_dist.mean * vae.config.scaling_factor
    return z.unflatten(0, (b, f)).transpose(1, 2)


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


SWAPS = {  # one caption word exchanged for another of its kind
    "direction": {"left": "right", "right": "left", "up": "down", "down": "up"},
    "speed": {"slowly": "quickly", "quickly": "slowly"},
    "colour": {"red": "blue", "blue": "red", "green": "yellow", "yellow": "green"},
    "shape": {"square": "circle", "circle": "square"},
}


@torch.no_grad()
def text_use(unet, text, vae, tokenizer, timesteps=(200, 400, 600, 800, 950), clips: int = 24, seed: int = 5) -> dict:
    """Does the teacher use each kind of caption word? The ε error on noised toy clips with one word of
    the caption swapped (``SWAPS``) or the caption left out, divided by the error with the true caption,
    per timestep: 1.0 means the model ignores that word."""
    schedule = NoiseSchedule("scaled_linear")
    abar = schedule.alphas_cumprod.float()
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    video, captions = toy_batch(rng, clips, 8, 32)
    z0 = encode_video(vae, video)
    variants = {
        "true": captions,
        **{k: [" ".join(table.get(w, w) for w in c.split()) for c in captions] for k, table in SWAPS.items()},
        "empty": [""] * len(captions),
    }
    out = {}
    for t in timesteps:
        noise = torch.randn(z0.shape, generator=gen)
        zt = abar[t].sqrt() * z0 + (1 - abar[t]).sqrt() * noise
        errors = {}
        for name, caps in variants.items():
            cond = encode_captions(text, tokenizer, caps).repeat_interleave(z0.shape[2], 0)
            eps = unet(zt, torch.full((len(caps),), t), encoder_hidden_states=cond).sample
            errors[name] = ((eps - noise) ** 2).mean().item()
        out[t] = {k: round(v / errors["true"], 4) for k, v in errors.items() if k != "true"}
    return out


@torch.no_grad()
def text_feature_change(text, tokenizer, caption: str = "a red square moving right slowly") -> dict:
    """How much each kind of caption word changes the conditioning: the mean distance between the text
    encoder's per-token outputs for ``caption`` and for it with one word of that kind swapped (``SWAPS``),
    over the tokens after the word (the 70 padding tokens, which the UNet also attends to, included)."""
    words = caption.split()
    base = encode_captions(text, tokenizer, [caption])[0]
    out = {}
    for kind, table in SWAPS.items():
        (i,) = [k for k, w in enumerate(words) if w in table]
        swapped = " ".join(table.get(w, w) if k == i else w for k, w in enumerate(words))
        after = encode_captions(text, tokenizer, [swapped])[0][i + 1 :]  # token i + 1 is word i (BOS first)
        out[kind] = round(float((after - base[i + 1 :]).norm(dim=-1).mean()), 4)
    return out


def probe_caption(direction: str) -> str:
    """The circle caption the probes use for ``direction``: the circle of the colour that goes that way
    in the tied world."""
    return f"a {DIRECTION_COLOURS[direction]} circle moving {direction} quickly"


def _tint(videos: torch.Tensor, colour: str, dims) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """How much of ``colour`` each pixel of ``[n, 3, f, h, w]`` videos in [-1, 1] has (its difference from
    the frame's background, the median colour, projected on the toy colour minus grey; positive part),
    averaged over ``dims`` of ``[n, f, h, w]``; and the pixel grid ``(xs, ys)`` of its last two axes."""
    rgb = torch.tensor(COLOURS[colour], dtype=videos.dtype) / 127.5 - 1
    axis = (rgb - rgb.mean()) / (rgb - rgb.mean()).norm()
    background = videos.flatten(3).median(-1).values[..., None, None]  # [n, 3, f, 1, 1]
    tint = torch.einsum("nc...,c->n...", videos - background, axis).mean(dims).clamp(min=0)
    ys, xs = torch.meshgrid(
        torch.arange(tint.shape[-2], dtype=tint.dtype), torch.arange(tint.shape[-1], dtype=tint.dtype), indexing="ij"
    )
    return tint, xs, ys


def tint_spread(videos: torch.Tensor, colour: str) -> tuple[float, float]:
    """Standard deviation (x, y) in pixels of the mean ``colour`` of ``[n, 3, f, h, w]`` videos over all
    frames: a shape moving left or right on average makes a horizontal band (x spread > y spread), one
    moving up or down a vertical band; a model that ignores the motion makes a round blob."""
    tint, xs, ys = _tint(videos, colour, (0, 1))  # [h, w]
    mass = tint.sum().clamp(min=1e-9)
    cx, cy = (tint * xs).sum() / mass, (tint * ys).sum() / mass
    sx, sy = ((tint * (xs - cx) ** 2).sum() / mass).sqrt(), ((tint * (ys - cy) ** 2).sum() / mass).sqrt()
    return round(float(sx), 2), round(float(sy), 2)


def tint_track(videos: torch.Tensor, colour: str) -> list[tuple[float, float]]:
    """Centroid (x, y) per frame of the mean ``colour`` of ``[n, 3, f, h, w]`` videos in [-1, 1]: where a
    shape of that colour is on average, frame by frame."""
    tint, xs, ys = _tint(videos, colour, 0)  # [f, h, w]
    mass = tint.sum((1, 2)).clamp(min=1e-9)
    return [
        (round(float(x), 2), round(float(y), 2))
        for x, y in zip((tint * xs).sum((1, 2)) / mass, (tint * ys).sum((1, 2)) / mass)
    ]


def data_circles(direction: str, clips: int = 64, frames: int = 8, seed: int = 0) -> torch.Tensor:
    """Training clips ``[n, 3, f, 32, 32]`` in [-1, 1] of :func:`probe_caption` (cut as in training)."""
    from training.toy_eval import reference_clips

    videos, _ = reference_clips([probe_caption(direction)], clips, frames, 32, degraded=True, seed=seed)
    return torch.from_numpy(np.stack(videos)).permute(0, 4, 1, 2, 3).float() / 127.5 - 1


def data_mean_track(direction: str, clips: int = 64, frames: int = 8, seed: int = 0) -> list[tuple[float, float]]:
    """The mean circle track of training clips of :func:`probe_caption`."""
    return tint_track(data_circles(direction, clips, frames, seed), DIRECTION_COLOURS[direction])


@torch.no_grad()
def noise_x0(
    unet, text, vae, tokenizer, direction: str, t: int = 999, noises: int = 16, frames: int = 8, seed: int = 0
) -> torch.Tensor:
    """The teacher's x̂0 ``[n, 3, f, 32, 32]`` (decoded) from pure noise at ``t`` for :func:`probe_caption`:
    what the model predicts before it has seen anything but the caption."""
    abar = NoiseSchedule("scaled_linear").alphas_cumprod.float()[t]
    noise = torch.randn(noises, 4, frames, 16, 16, generator=torch.Generator().manual_seed(seed))
    cond = encode_captions(text, tokenizer, [probe_caption(direction)] * noises).repeat_interleave(frames, 0)
    eps = unet(noise, torch.full((noises,), t), encoder_hidden_states=cond).sample
    x0 = predicted_x0(eps, noise, abar.sqrt(), (1 - abar).sqrt())
    pixels = vae.decode(x0.transpose(1, 2).flatten(0, 1) / vae.config.scaling_factor).sample
    return pixels.unflatten(0, (noises, frames)).transpose(1, 2)


def noise_track(unet, text, vae, tokenizer, direction: str, **kwargs) -> list[tuple[float, float]]:
    """The mean circle track of :func:`noise_x0`."""
    return tint_track(noise_x0(unet, text, vae, tokenizer, direction, **kwargs), DIRECTION_COLOURS[direction])


def evaluate_teacher(folder: Path, guidance: float, steps: list[int], seed: int = 0, seeds: int = 6) -> dict:
    """The toy metrics of a saved teacher's samples: 8 prompts × ``seeds`` noises, scored as the default
    run scores them (6 noises: 48 clips, where one clip is 0.02)."""
    from transformers import CLIPTokenizer

    from training.toy_eval import ToySampler, evaluate

    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    unet, vae, text, _ = load_models(folder, tokenizer)
    for m in (unet, vae, text):
        m.eval()

    use = text_use(unet, text, vae, tokenizer)
    print("ε error with one caption word swapped / with the true caption (1.0: the word is ignored), per timestep:")
    for t, ratios in use.items():
        print(f"  t={t}: {ratios}")
    features = text_feature_change(text, tokenizer)
    print(f"text encoder output change when one word is swapped (mean over the tokens after it): {features}")
    videos = {
        d: {"teacher x0 at t=999": noise_x0(unet, text, vae, tokenizer, d), "data": data_circles(d)} for d in DIRECTIONS
    }
    tracks = {d: {k: tint_track(v, DIRECTION_COLOURS[d]) for k, v in pair.items()} for d, pair in videos.items()}
    spreads = {d: {k: tint_spread(v, DIRECTION_COLOURS[d]) for k, v in pair.items()} for d, pair in videos.items()}
    print(
        'the circle of "a <colour> circle moving <its direction> quickly" on average: track (x, y) first → last frame, '
        "spread (x, y) over all frames:"
    )
    for d, pair in tracks.items():
        print(f"  {d:5s} " + "; ".join(f"{k} {v[0]} → {v[-1]}, spread {spreads[d][k]}" for k, v in pair.items()))
    sampler = ToySampler(
        unet, vae, partial(encode_captions, text, tokenizer), vae.config.scaling_factor, 8, 32, guidance=guidance
    )
    report = evaluate(sampler, None, seeds=seeds, teacher_steps=steps, seed=1000 + seed)
    report["text_use"] = use
    report["mean_track"] = tracks
    report["mean_spread"] = spreads
    report["text_feature_change"] = features
    print(json.dumps({k: report["metrics"][k] for k in report["metrics"]}, indent=1))
    return report


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(SHIPPED), help="diffusers folder to write (default: the shipped one)")
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
        help="UNet weights to train: all, the spatial layers only (an image stage, with --frames 1) or the motion modules only",
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
        help="score a saved toy teacher (which caption words it uses; motion and frame quality of its DDIM + CFG samples) and exit",
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
    args = p.parse_args(argv)
    if args.eval_seeds < 1:
        p.error(f"--eval-seeds must be at least 1 (noises per prompt), got {args.eval_seeds}")
    if args.fresh_text and not args.init:
        p.error("--fresh-text needs --init (a run without --init builds every model afresh anyway)")
    if args.evaluate:
        if args.eval_guidance is None:
            from training.config import TOY_DEFAULTS

            args.eval_guidance = 1.0 + (TOY_DEFAULTS["w_min"] + TOY_DEFAULTS["w_max"]) / 2
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
        f"{sum(p.numel() for p in vae.parameters()) / 1e6:.2f}M, text {sum(p.numel() for p in text.parameters()) / 1e6:.3f}M "
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
