"""The toy world: coloured shapes moving as their captions say, where the right answer is known exactly.

``a <colour> <shape> moving <direction> <slowly|quickly>``: squares move 1 px/frame, circles 2 (at 32 px), a
white stripe marks the shape's leading side, and in the *tied* world (the default) each colour has its own
direction. :func:`toy_clip` renders a clip and its caption; ``degraded`` clips carry what web video has and a
clean image set has not (blur, noise, low contrast, a watermark-like bar). :func:`write_toy_shards` and
:func:`write_toy_image_shards` write the video set and the clean image set as webdataset shards, so a toy run
reads them through the trainer's real loaders.
"""

from __future__ import annotations

import io
import json
import math
import tarfile
from pathlib import Path

import numpy as np

from training.samples import encode_mp4

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 80, 220), "yellow": (230, 200, 40)}
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
SHAPES = ("square", "circle")
SHAPE_SPEEDS = {"square": 1, "circle": 2}  # px/frame at 32 px: squares move slowly, circles quickly
SPEED_WORDS = {1: "slowly", 2: "quickly"}
# the tied world: each colour has its own direction, so a word the UNet already draws (the colour) sets
# the way the shape goes, as in real video where what a thing is tells how it moves (cars drive, birds fly)
COLOUR_DIRECTIONS = {"red": "right", "green": "left", "blue": "up", "yellow": "down"}
DIRECTION_COLOURS = {d: c for c, d in COLOUR_DIRECTIONS.items()}  # the colour that goes each way
WORLDS = ("tied", "marked", "plain")
MARKER = (245, 245, 245)  # the stripe on the shape's leading side
MARKER_WIDTH = 2  # px


def toy_clip(
    seed: int, frames: int = 16, size: int = 32, degraded: bool = True, world: str = "tied"
) -> tuple[np.ndarray, str]:
    """One clip of a shape moving across a plain background, and its caption (all drawn from ``seed``).

    The motion can be read off every single frame, as in real video where a walking person faces the way
    they go: a white stripe marks the side of the shape that leads, and the shape sets the speed
    (squares 1 px/frame, "slowly"; circles 2 px/frame, "quickly"). So the caption's direction word has
    something to draw in each frame (through the UNet's per-frame cross-attention), and the motion
    modules learn from the video itself to move a shape towards its stripe at its shape's speed.

    ``degraded`` adds what web video has and a clean image set has not: blur, noise, low contrast
    and a watermark-like bar.

    ``world`` (:data:`WORLDS`): ``"tied"`` (the default) also ties the direction to the colour
    (:data:`COLOUR_DIRECTIONS`); ``"marked"`` draws the direction independently of the colour;
    ``"plain"`` is the earlier world of the shipped teacher's first stages (no stripe, a speed drawn
    independently of the shape). A seed gives the same colour, shape, background and noise in the tied
    and the marked world.
    """
    if world not in WORLDS:
        raise ValueError(f"unknown toy world {world!r}; expected one of {list(WORLDS)}")
    rng = np.random.default_rng(seed)
    colour = list(COLOURS)[rng.integers(len(COLOURS))]
    direction = list(DIRECTIONS)[rng.integers(len(DIRECTIONS))]
    if world == "tied":
        direction = COLOUR_DIRECTIONS[colour]
    shape = SHAPES[rng.integers(len(SHAPES))]
    speed = SHAPE_SPEEDS[shape] if world != "plain" else int(rng.integers(1, 3))
    return render_toy_clip(colour, shape, direction, speed, rng, frames, size, degraded, world != "plain")


def render_toy_clip(
    colour: str,
    shape: str,
    direction: str,
    speed: int,
    rng: np.random.Generator,
    frames: int = 16,
    size: int = 32,
    degraded: bool = True,
    marked: bool = True,
) -> tuple[np.ndarray, str]:
    """A clip of the given scene (background, start jitter and noise from ``rng``) and its caption."""
    background = rng.integers(0, 60, size=3)
    r = size // 8
    dx, dy = DIRECTIONS[direction]
    x0 = size // 2 - dx * speed * frames // 2 + int(rng.integers(-2, 3))
    y0 = size // 2 - dy * speed * frames // 2 + int(rng.integers(-2, 3))
    yy, xx = np.mgrid[0:size, 0:size]
    out = np.empty((frames, size, size, 3), dtype=np.float32)
    for f in range(frames):
        cx, cy = x0 + dx * speed * f, y0 + dy * speed * f
        mask = (
            (np.abs(xx - cx) <= r) & (np.abs(yy - cy) <= r)
            if shape == "square"
            else (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
        )
        frame = np.broadcast_to(background, (size, size, 3)).astype(np.float32).copy()
        frame[mask] = COLOURS[colour]
        if marked:  # the stripe: the shape's pixels within MARKER_WIDTH of its leading edge
            frame[mask & (dx * (xx - cx) + dy * (yy - cy) > r - MARKER_WIDTH)] = MARKER
        out[f] = frame
    if degraded:
        blurred = out.copy()
        for axis in (1, 2):
            blurred = (np.roll(blurred, 1, axis) + blurred + np.roll(blurred, -1, axis)) / 3
        out = 0.6 * blurred + 0.4 * 110 + rng.normal(0, 8, out.shape)
        out[:, size - 4 : size - 1, 2 : size // 2] = 235  # watermark-like bar
    return np.clip(out, 0, 255).astype(np.uint8), f"a {colour} {shape} moving {direction} {SPEED_WORDS[speed]}"


def toy_prompts() -> list[str]:
    """The eight captions of the (tied) toy world: every colour with both shapes, so each shape goes every
    direction (the colour sets the direction, the shape the speed); the first four have every colour and
    both shapes."""
    colours = list(COLOURS)
    scenes = [(colours[i % 4], SHAPES[(i + i // 4) % 2]) for i in range(8)]
    return [f"a {c} {s} moving {COLOUR_DIRECTIONS[c]} {SPEED_WORDS[SHAPE_SPEEDS[s]]}" for c, s in scenes]


def write_toy_shards(
    root: str | Path,
    num_clips: int = 64,
    per_shard: int = 32,
    frames: int = 16,
    size: int = 32,
    seed: int = 0,
    world: str = "tied",
) -> Path:
    """Write the toy video set as webdataset shards (``toy-00000.tar`` …); reuses existing shards written
    with the same settings and toy ``world`` (shards of another world are written anew)."""
    root = Path(root)
    marker = root / "toy.json"
    spec = {
        "num_clips": num_clips,
        "per_shard": per_shard,
        "frames": frames,
        "size": size,
        "seed": seed,
        "world": world,
    }
    if marker.exists() and json.loads(marker.read_text()) == spec:
        return root
    root.mkdir(parents=True, exist_ok=True)
    for s in range(math.ceil(num_clips / per_shard)):
        tmp = root / f".toy-{s:05d}.tar.tmp"
        with tarfile.open(tmp, "w") as tar:
            for i in range(s * per_shard, min(num_clips, (s + 1) * per_shard)):
                clip, caption = toy_clip(seed * 100003 + i, frames, size, world=world)
                for suffix, data in ((".mp4", encode_mp4(clip)), (".json", json.dumps({"caption": caption}).encode())):
                    info = tarfile.TarInfo(f"{i:06d}{suffix}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        tmp.replace(root / f"toy-{s:05d}.tar")
    marker.write_text(json.dumps(spec))
    return root


def write_toy_image_shards(
    root: str | Path, num_images: int = 128, size: int = 32, seed: int = 0, world: str = "tied"
) -> Path:
    """The toy high-quality image set: clean single frames of the toy scenes of ``world``, as PNG + caption
    shards; reused like :func:`write_toy_shards`."""
    from PIL import Image

    root = Path(root)
    marker = root / "toy-images.json"
    spec = {"num_images": num_images, "size": size, "seed": seed, "world": world}
    if marker.exists() and json.loads(marker.read_text()) == spec:
        return root
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / ".images-00000.tar.tmp"
    with tarfile.open(tmp, "w") as tar:
        for i in range(num_images):
            clip, caption = toy_clip(seed * 100003 + 50000 + i, frames=1, size=size, degraded=False, world=world)
            buf = io.BytesIO()
            Image.fromarray(clip[0]).save(buf, format="PNG")
            for suffix, data in ((".png", buf.getvalue()), (".txt", caption.encode())):
                info = tarfile.TarInfo(f"{i:06d}{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    tmp.replace(root / "images-00000.tar")
    marker.write_text(json.dumps(spec))
    return root
