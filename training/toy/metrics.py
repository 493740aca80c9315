"""Metrics for the toy world, where the right answer is known exactly.

Every toy caption says what must happen: ``a <colour> <shape> moving <direction> <slowly|quickly>``
(squares 1, circles 2 pixels per frame at 32 px before the trainer's crop; a white stripe on the
leading side). So a generated clip can be checked by
tracking the shape:

* **motion**: the shape's centroid (pixels that stand out from the frame's median colour) is tracked
  over the frames and a line is fitted to it; the clip is *correct* when the fitted velocity points
  within 45° of the captioned direction and its speed falls in the captioned class (below or above
  1.5 px/frame). ``velocity_error`` is the distance between the fitted and the captioned velocity.
  Whatever the caption, a clip is *coherent* when the shape stays visible and moves (over 0.3
  px/frame) along a straight constant-speed path (``track_residual``, the RMS distance of the track
  from the fitted line, under 1 px): what every training clip does, and what a teacher that ignores
  the motion words can still get right.
* **frame quality**: ``watermark`` (brightness of the bar that the degraded videos carry, above the
  frame's median, 0-1), ``grain`` (median absolute Laplacian: noise in flat regions), ``sharpness``
  (steepest edge over the shape's contrast: about 1 for a crisp edge, about 0.3 for the degraded videos'
  blur), ``background`` (median brightness, which the degradation lifts), and the Fréchet distance of these
  features to the clean image set and to the degraded video frames (``fd_clean`` / ``fd_degraded``; lower is
  closer).

Teacher and MCM start every clip from the same noise, so the evaluation also compares them clip by clip
(``paired``): the difference in each 0/1 score with its standard error and an exact sign test, which
says whether a gap between two methods is beyond what the number of clips can resolve.

The same functions score the data themselves (:func:`reference_clips`, :func:`reference_features`), so a
reader can see what a perfect score looks like on each metric before trusting it on samples.
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch

from mcm.metrics import frechet_distance_of
from training.data import select_clip
from training.sampling import to_uint8
from training.toy.world import DIRECTIONS, SPEED_WORDS, render_toy_clip, toy_clip

MIN_CONTRAST = 25.5  # 0-255 scale: the sharpness denominator's floor
COHERENT_RESIDUAL = 1.0  # px: RMS distance of a coherent track from a straight constant-speed path
SLOW_FAST_SPLIT = 1.5  # px/frame between "slowly" (1) and "quickly" (2), allowing for the crop's zoom
MIN_SPEED = 0.3  # px/frame: a tracked shape slower than this is standing still
SAME_DIRECTION = math.cos(math.pi / 4)  # two motions point the same way when within 45° of each other
SPEEDS = {word: float(px) for px, word in SPEED_WORDS.items()}  # caption word → px/frame: "slowly" 1, "quickly" 2
FEATURES = ("watermark", "sharpness", "background", "grain")
PAIRED = ("correct", "coherent", "visible")  # the per-clip 0/1 scores compared clip by clip between methods


def parse_caption(caption: str) -> tuple[np.ndarray, float]:
    """The captioned velocity direction (unit, image axes x right / y down) and speed in px/frame."""
    words = caption.lower().replace(",", " ").split()
    direction = next((DIRECTIONS[w] for w in words if w in DIRECTIONS), None)
    speed = next((SPEEDS[w] for w in words if w in SPEEDS), None)
    if direction is None or speed is None:
        raise ValueError(
            f"not a toy caption (needs a direction {list(DIRECTIONS)} and a speed {list(SPEEDS)}): {caption!r}"
        )
    return np.asarray(direction, dtype=np.float64), speed


# --- tracking and scoring ---------------------------------------------------------------------------


def _bar_mask(size: int) -> np.ndarray:
    """Where the degraded videos' watermark-like bar sits (excluded from tracking)."""
    mask = np.zeros((size, size), bool)
    mask[size - 5 :, : size // 2 + 3] = True
    return mask


def saliency(frames: np.ndarray) -> np.ndarray:
    """``[f, h, w]``: how far each pixel's colour is from its frame's median colour (0-255 scale)."""
    x = frames.astype(np.float64)
    median = np.median(x.reshape(len(x), -1, 3), axis=1)[:, None, None, :]
    return np.abs(x - median).max(axis=-1)


def track(frames: np.ndarray, threshold: float = 40.0) -> tuple[np.ndarray, np.ndarray]:
    """Centroids ``[f, 2]`` (x, y) of the salient pixels and the salient mass per frame."""
    s = saliency(frames)
    s[:, _bar_mask(frames.shape[1])] = 0
    weight = np.clip(s - threshold, 0, None)
    mass = weight.sum(axis=(1, 2))
    yy, xx = np.mgrid[0 : frames.shape[1], 0 : frames.shape[2]]
    safe = np.maximum(mass, 1e-9)
    centroids = np.stack([(weight * xx).sum(axis=(1, 2)) / safe, (weight * yy).sum(axis=(1, 2)) / safe], axis=1)
    return centroids, mass


def motion_of(frames: np.ndarray, caption: str) -> dict:
    """Motion scores of one clip ``uint8 [f, h, w, 3]`` against its caption."""
    direction, speed = parse_caption(caption)
    centroids, mass = track(frames)
    visible = bool((mass > 50.0).all())  # at least a few clearly salient pixels in every frame
    f = np.arange(len(frames), dtype=np.float64)
    if visible:  # a line per axis; the residual is the track's RMS distance from it (a constant-velocity path)
        fits = [np.polyfit(f, centroids[:, k], 1) for k in range(2)]
        velocity = np.array([fit[0] for fit in fits])
        line = np.stack([np.polyval(fit, f) for fit in fits], axis=1)
        residual = float(np.sqrt(((centroids - line) ** 2).sum(axis=1).mean()))
    else:
        velocity, residual = np.zeros(2), len(frames[0]) / 4
    measured = float(np.linalg.norm(velocity))
    cosine = float(velocity @ direction / measured) if measured > 1e-9 else 0.0
    direction_ok = visible and measured > MIN_SPEED and cosine > SAME_DIRECTION
    speed_ok = visible and ((measured < SLOW_FAST_SPLIT) == (speed < SLOW_FAST_SPLIT))
    return {
        "velocity": (float(velocity[0]), float(velocity[1])) if visible else None,
        "correct": float(direction_ok and speed_ok),
        "direction_correct": float(direction_ok),
        "speed_class_correct": float(speed_ok),
        "velocity_error": float(np.linalg.norm(velocity - speed * direction)) if visible else float(2 * speed),
        "coherent": float(visible and measured > MIN_SPEED and residual < COHERENT_RESIDUAL),
        "track_residual": residual,
        "visible": float(visible),
    }


def frame_features(frames: np.ndarray) -> np.ndarray:
    """``[n, 4]`` per frame: watermark, sharpness, background, grain (see the module docstring)."""
    x = frames.astype(np.float64)
    luma = x @ np.array([0.299, 0.587, 0.114])
    n, size = luma.shape[0], luma.shape[1]
    median = np.median(luma.reshape(n, -1), axis=1)
    bar = np.median(luma[:, size - 4 : size - 1, 2 : size // 2].reshape(n, -1), axis=1)
    watermark = np.clip(bar - median, 0, None) / 255.0
    s = saliency(frames)
    s[:, _bar_mask(size)] = 0
    grad = np.maximum(np.abs(np.diff(s, axis=1))[:, :, :-1], np.abs(np.diff(s, axis=2))[:, :-1, :])
    flat = s.reshape(n, -1)
    # the shape's contrast: the 99.5th percentile, or the 5th-largest value where the shape is a sliver at the
    # border (under 0.5% of the pixels, where the percentile is the background's and the ratio would explode);
    # a floor of 10% of the range for frames without a shape
    contrast = np.maximum(np.percentile(flat, 99.5, axis=1), np.sort(flat, axis=1)[:, -5])
    sharpness = np.percentile(grad.reshape(n, -1), 99.5, axis=1) / np.maximum(contrast, MIN_CONTRAST)
    lap = 4 * luma[:, 1:-1, 1:-1] - luma[:, :-2, 1:-1] - luma[:, 2:, 1:-1] - luma[:, 1:-1, :-2] - luma[:, 1:-1, 2:]
    grain = np.median(np.abs(lap).reshape(n, -1), axis=1) / 255.0  # flat regions dominate the median
    return np.stack([watermark, sharpness, median / 255.0, grain], axis=1)


def score_videos(
    videos: list[np.ndarray],
    captions: list[str],
    clean: np.ndarray,
    degraded: np.ndarray,
    motion: list[dict] | None = None,
) -> dict:
    """Mean motion and frame-quality scores of clips ``uint8 [f, h, w, 3]``; ``clean`` / ``degraded``
    are the reference frame features (:func:`frame_features`); ``motion``: the clips' :func:`motion_of`
    where already computed."""
    motion = motion if motion is not None else [motion_of(v, c) for v, c in zip(videos, captions)]
    feats = np.concatenate([frame_features(v) for v in videos])
    out = {k: round(float(np.mean([m[k] for m in motion])), 4) for k in motion[0] if k != "velocity"}
    out.update({k: round(float(feats[:, i].mean()), 4) for i, k in enumerate(FEATURES)})
    out["fd_clean"] = round(frechet_distance_of(torch.from_numpy(feats), torch.from_numpy(clean)), 5)
    out["fd_degraded"] = round(frechet_distance_of(torch.from_numpy(feats), torch.from_numpy(degraded)), 5)
    return out


def paired_difference(a: list[float], b: list[float]) -> dict:
    """``a − b`` over the same clips (same prompt, same starting noise) of a per-clip 0/1 score.

    The standard error is that of the mean per-clip difference, so it credits the pairing; ``wins`` /
    ``losses`` count the clips where only ``a`` / only ``b`` scores, and ``sign_test_p`` is the exact
    two-sided sign test on them (McNemar's test): the chance of a split at least this uneven if neither
    method were better.
    """
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(
            f"paired_difference needs two equally long lists of at least 2 clips, got {len(a)} and {len(b)}"
        )
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    wins, losses = int((d > 0).sum()), int((d < 0).sum())
    m, k = wins + losses, min(wins, losses)
    p = min(1.0, 2 * sum(math.comb(m, i) for i in range(k + 1)) / 2**m) if m else 1.0
    return {
        "difference": round(float(d.mean()), 4),
        "standard_error": round(float(d.std(ddof=1) / math.sqrt(len(d))), 4),
        "wins": wins,
        "losses": losses,
        "sign_test_p": round(p, 4),
    }


def moves_alike(velocity, reference) -> float:
    """1.0 when a clip's fitted velocity moves like a reference clip's: both tracked and moving (over
    ``MIN_SPEED``), within 45° of each other and in the same speed class (as :func:`motion_of` judges a
    clip against its caption); else 0.0."""
    if velocity is None or reference is None:
        return 0.0
    v, r = np.asarray(velocity), np.asarray(reference)
    nv, nr = float(np.linalg.norm(v)), float(np.linalg.norm(r))
    if nv <= MIN_SPEED or nr <= MIN_SPEED:
        return 0.0
    return float(v @ r / (nv * nr) > SAME_DIRECTION and (nv < SLOW_FAST_SPLIT) == (nr < SLOW_FAST_SPLIT))


def alike_where_reference_moves(clips: list[dict], reference: list[dict]) -> list[float]:
    """:func:`moves_alike` of each clip against its reference clip, over the reference clips that move
    coherently (where the teacher has a motion to copy), in clip order."""
    if len(clips) != len(reference):
        raise ValueError(f"agreement needs the same clips on both sides, got {len(clips)} and {len(reference)}")
    return [moves_alike(c["velocity"], r["velocity"]) for c, r in zip(clips, reference) if r["coherent"]]


def agreement(clips: list[dict], reference: list[dict]) -> dict:
    """How a method's clips move against a reference method's clips on the same prompts and noise (the
    student against its teacher): ``moves_like`` is the share of clips that :func:`moves_alike` their
    reference clip, counted over the reference clips that move coherently (where the teacher has a
    motion to copy); ``velocity_gap`` the mean distance (px/frame) between the two fitted velocities
    over the clips where both are tracked."""
    alike = alike_where_reference_moves(clips, reference)
    both = [i for i in range(len(clips)) if clips[i]["velocity"] is not None and reference[i]["velocity"] is not None]
    gap = [float(np.linalg.norm(np.subtract(clips[i]["velocity"], reference[i]["velocity"]))) for i in both]
    return {
        "moves_like": round(float(np.mean(alike)), 4) if alike else None,
        "reference_clips": len(alike),
        "velocity_gap": round(float(np.mean(gap)), 4) if gap else None,
    }


def reference_clips(prompts: list[str], per_prompt: int, frames: int, size: int, degraded: bool, seed: int = 12345):
    """Toy clips of exactly ``prompts``, cut like training clips: the data's own score on the metrics."""
    rng, np_rng = random.Random(seed), np.random.default_rng(seed)
    videos, captions = [], []
    for prompt in prompts:
        words = prompt.split()  # "a <colour> <shape> moving <direction> <slowly|quickly>"
        for _ in range(per_prompt):
            clip, caption = render_toy_clip(
                words[1], words[2], words[4], int(SPEEDS[words[5]]), np_rng, 16, size, degraded
            )
            videos.append(to_uint8(select_clip(clip, frames, 1, size, "random", rng).transpose(0, 1)))
            captions.append(caption)
    return videos, captions


def reference_features(frames: int, size: int, n: int = 96, seed: int = 777) -> tuple[np.ndarray, np.ndarray]:
    """Frame features of clean toy images and of degraded toy video frames."""
    clean = np.concatenate([frame_features(toy_clip(seed + i, 1, size, degraded=False)[0]) for i in range(n)])
    degraded = np.concatenate(
        [frame_features(toy_clip(seed + i, frames, size, degraded=True)[0][:1]) for i in range(n)]
    )
    return clean, degraded
