"""Probes of a toy teacher (``train_teacher.py --evaluate``): which caption words it uses, where its circles go
from pure noise, and the toy metrics of its DDIM + CFG samples."""

from __future__ import annotations

import json
import random
from functools import partial
from pathlib import Path

import numpy as np
import torch

from mcm.boundary import predicted_x0
from mcm.schedule import NoiseSchedule
from training.sampling import VideoSampler
from training.toy.evaluation import evaluate
from training.toy.metrics import reference_clips
from training.toy.toy_models import encode_captions, encode_video, load_models, toy_batch
from training.toy.world import COLOURS, DIRECTION_COLOURS, DIRECTIONS

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
    sampler = VideoSampler(
        unet, vae, partial(encode_captions, text, tokenizer), vae.config.scaling_factor, 8, 32, guidance=guidance
    )
    report = evaluate(sampler, None, seeds=seeds, teacher_steps=steps, seed=1000 + seed)
    report["text_use"] = use
    report["mean_track"] = tracks
    report["mean_spread"] = spreads
    report["text_feature_change"] = features
    print(json.dumps({k: report["metrics"][k] for k in report["metrics"]}, indent=1))
    return report
