"""Video data for distillation: webdataset shards, a folder of videos, and a synthetic toy world.

* **Shards** (how WebVid is usually packed): ``*.tar`` files whose samples are ``<key>.mp4`` +
  ``<key>.json`` (``{"caption": ...}``; ``.txt`` also accepted). Read with the standard library's
  ``tarfile``, so no webdataset package is needed.
* **Folder**: video files with a caption each, from ``captions.jsonl`` (``{"file", "caption"}`` per line)
  or a ``<name>.txt`` next to the video.
* **Toy**: deterministic clips of coloured shapes moving as their caption says, written as shards
  by :func:`write_toy_shards` so that the real reading path is what the toy run exercises.

Clips are ``[3, frames, size, size]`` in [-1, 1]. A sample that cannot be decoded, or is too short,
is skipped and counted (``stats``), never a crash.
"""

from __future__ import annotations

import io
import json
import math
import random
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import IterableDataset, get_worker_info

VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".gif")


class DataError(ValueError):
    """A dataset that cannot be used at all (missing, empty); single bad samples are skipped instead."""


# --- decoding and clip selection -------------------------------------------------------------------


def decode_video(data: bytes | str | Path) -> np.ndarray:
    """All frames of a video as ``uint8 [n, h, w, 3]`` (PyAV)."""
    import av

    source = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else str(data)
    with av.open(source) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    if not frames:
        raise ValueError("no video frames")
    return np.stack(frames)


def select_clip(frames: np.ndarray, num_frames: int, interval: int, size: int, crop: str, rng: random.Random) -> torch.Tensor:
    """``num_frames`` frames ``interval`` apart, cropped and resized to ``size``², in [-1, 1]."""
    span = (num_frames - 1) * interval + 1
    if len(frames) < span:
        raise ValueError(f"{len(frames)} frames, {span} needed ({num_frames} frames × interval {interval})")
    start = rng.randint(0, len(frames) - span)
    clip = torch.from_numpy(frames[start : start + span : interval]).permute(3, 0, 1, 2).float() / 127.5 - 1.0
    _, _, h, w = clip.shape
    if crop == "random":  # random-resized crop, one crop for all frames (official: scale 0.75-1)
        area = h * w * rng.uniform(0.75, 1.0)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        ch, cw = min(h, int(round(math.sqrt(area / ratio)))), min(w, int(round(math.sqrt(area * ratio))))
        top, left = rng.randint(0, h - ch), rng.randint(0, w - cw)
    else:  # centre square
        ch = cw = min(h, w)
        top, left = (h - ch) // 2, (w - cw) // 2
    clip = clip[:, :, top : top + ch, left : left + cw]
    clip = F.interpolate(clip.permute(1, 0, 2, 3), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return clip.permute(1, 0, 2, 3).clamp(-1, 1).contiguous()


def _caption_from(raw: bytes, suffix: str) -> str:
    text = raw.decode("utf-8", errors="replace")
    if suffix == ".json":
        obj = json.loads(text)
        for key in ("caption", "text", "name"):
            if isinstance(obj.get(key), str):
                return obj[key]
        raise ValueError("json has no 'caption'")
    return text.strip()


# --- datasets --------------------------------------------------------------------------------------


def tar_groups(shard: Path):
    """``(key, {suffix: bytes})`` per sample of a webdataset shard (a sample's files are consecutive)."""
    key, parts = None, {}
    with tarfile.open(shard) as tar:
        for member in tar:
            if not member.isfile():
                continue
            name = Path(member.name)
            this = str(name.parent / name.name.split(".")[0])
            if this != key and parts:
                yield key, parts
                parts = {}
            key = this
            parts["." + name.name.split(".", 1)[-1].lower()] = tar.extractfile(member).read()
    if parts:
        yield key, parts


def folder_captions(root: Path) -> dict[str, str]:
    """``captions.jsonl`` of a folder dataset: ``{relative path: caption}``."""
    captions = {}
    index = root / "captions.jsonl"
    if index.exists():
        for n, line in enumerate(index.read_text().splitlines(), 1):
            if line.strip():
                try:
                    item = json.loads(line)
                    captions[item["file"]] = item["caption"]
                except (json.JSONDecodeError, KeyError) as exc:
                    raise DataError(f"{index}:{n}: expected {{\"file\": ..., \"caption\": ...}} ({exc})") from None
    return captions


class _CaptionedStream(IterableDataset):
    """Endless, shuffled, captioned samples from shards or a folder, split across processes and workers.

    Subclasses give ``suffixes`` (the media files), ``name`` (the output key) and ``_decode``. A sample
    that cannot be used is skipped and counted in ``stats`` (per worker) and in the batch
    (``"skipped"``); a dataset from which nothing can be used is a :class:`DataError`.
    """

    suffixes: tuple[str, ...] = ()
    name = "sample"

    def __init__(self, root, seed: int = 0, rank: int = 0, world_size: int = 1):
        self.root, self.seed, self.rank, self.world_size = Path(root), seed, rank, world_size
        what = f"{self.name} dataset"
        if not self.root.exists():
            raise DataError(f"{self.root}: no such {what} (expected *.tar shards or a folder of {self.name}s)")
        self.shards = sorted(self.root.glob("*.tar")) if self.root.is_dir() else [self.root] if self.root.suffix == ".tar" else []
        self.files = [] if self.shards else sorted(p for p in self.root.rglob("*") if p.suffix.lower() in self.suffixes)
        if not self.shards and not self.files:
            raise DataError(f"{self.root}: empty {what}: no *.tar shards and no {self.name} files")
        self.captions = {} if self.shards else folder_captions(self.root)

    def _items(self, source):
        """``(key, media bytes or path or None, caption or None)``."""
        if self.shards:
            for key, parts in tar_groups(source):
                media = next((parts[s] for s in parts if s in self.suffixes), None)
                text = next(((parts[s], s) for s in parts if s in (".json", ".txt", ".caption")), None)
                yield key, media, text
            return
        rel = source.relative_to(self.root).as_posix()
        caption = self.captions.get(rel)
        if caption is None and source.with_suffix(".txt").exists():
            caption = source.with_suffix(".txt").read_text().strip()
        yield rel, source, (caption.encode(), ".txt") if caption is not None else None

    def _decode(self, media, rng: random.Random) -> torch.Tensor:
        raise NotImplementedError

    def __iter__(self):
        worker = get_worker_info()
        wid, nworkers = (worker.id, worker.num_workers) if worker else (0, 1)
        shard_id, nshards = self.rank * nworkers + wid, self.world_size * nworkers
        rng = random.Random(self.seed * 1000003 + shard_id)
        self.stats = Counter()
        while True:
            sources = self.shards or self.files
            order = [s for i, s in enumerate(sources) if i % nshards == shard_id] or list(sources)
            rng.shuffle(order)
            produced = 0
            for source in order:
                for key, media, text in self._items(source):
                    try:
                        if media is None:
                            raise ValueError(f"no {self.name} file")
                        if text is None:
                            raise KeyError("no caption")
                        caption = _caption_from(*text)
                        value = self._decode(media, rng)
                    except Exception as exc:  # noqa: BLE001 - any bad sample is skipped and counted
                        self.stats["skipped"] += 1
                        self.stats[f"skipped:{type(exc).__name__}"] += 1
                        yield {"skipped": 1}
                        continue
                    self.stats["ok"] += 1
                    produced += 1
                    yield {self.name: value, "caption": caption, "key": key}
            if produced == 0:
                reasons = {k: v for k, v in self.stats.items() if k.startswith("skipped:")}
                raise DataError(f"{self.root}: no usable {self.name} (skipped {self.stats['skipped']}; reasons {reasons})")


def _collate(items: list[dict], name: str) -> dict:
    good = [i for i in items if name in i]
    batch = {"skipped": sum(i.get("skipped", 0) for i in items)}
    if good:
        batch[name] = torch.stack([i[name] for i in good])
        batch["caption"] = [i["caption"] for i in good]
    return batch


class VideoClips(_CaptionedStream):
    """Clips ``[3, frames, size, size]`` from video shards (``<key>.mp4`` + caption) or a folder of videos."""

    suffixes = VIDEO_SUFFIXES
    name = "video"

    def __init__(self, root: str | Path, num_frames: int = 16, interval: int = 1, size: int = 512,
                 crop: str = "random", seed: int = 0, rank: int = 0, world_size: int = 1):  # fmt: skip
        if crop not in ("random", "center"):
            raise DataError(f"--crop {crop!r}; expected 'random' or 'center'")
        self.num_frames, self.interval, self.size, self.crop = num_frames, interval, size, crop
        super().__init__(root, seed, rank, world_size)

    def _decode(self, media, rng):
        return select_clip(decode_video(media), self.num_frames, self.interval, self.size, self.crop, rng)


def collate(items: list[dict]) -> dict:
    return _collate(items, "video")


# --- the synthetic toy world -----------------------------------------------------------------------

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 80, 220), "yellow": (230, 200, 40)}
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
SHAPES = ("square", "circle")


def toy_clip(seed: int, frames: int = 16, size: int = 32, degraded: bool = True) -> tuple[np.ndarray, str]:
    """One clip of a shape moving across a plain background, and its caption (all drawn from ``seed``).

    ``degraded`` adds what web video has and a clean image set has not: blur, noise, low contrast
    and a watermark-like bar.
    """
    rng = np.random.default_rng(seed)
    colour = list(COLOURS)[rng.integers(len(COLOURS))]
    direction = list(DIRECTIONS)[rng.integers(len(DIRECTIONS))]
    shape = SHAPES[rng.integers(len(SHAPES))]
    speed = int(rng.integers(1, 3))
    return render_toy_clip(colour, shape, direction, speed, rng, frames, size, degraded)


def render_toy_clip(colour: str, shape: str, direction: str, speed: int, rng: np.random.Generator, frames: int = 16,
                    size: int = 32, degraded: bool = True) -> tuple[np.ndarray, str]:  # fmt: skip
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
        mask = (np.abs(xx - cx) <= r) & (np.abs(yy - cy) <= r) if shape == "square" else (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
        frame = np.broadcast_to(background, (size, size, 3)).astype(np.float32).copy()
        frame[mask] = COLOURS[colour]
        out[f] = frame
    if degraded:
        blurred = out.copy()
        for axis in (1, 2):
            blurred = (np.roll(blurred, 1, axis) + blurred + np.roll(blurred, -1, axis)) / 3
        out = 0.6 * blurred + 0.4 * 110 + rng.normal(0, 8, out.shape)
        out[:, size - 4 : size - 1, 2 : size // 2] = 235  # watermark-like bar
    speed_word = "slowly" if speed == 1 else "quickly"
    return np.clip(out, 0, 255).astype(np.uint8), f"a {colour} {shape} moving {direction} {speed_word}"


def encode_mp4(frames: np.ndarray, fps: int = 8) -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "preset": "ultrafast"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def write_toy_shards(root: str | Path, num_clips: int = 64, per_shard: int = 32, frames: int = 16, size: int = 32,
                     seed: int = 0) -> Path:  # fmt: skip
    """Write the toy video set as webdataset shards (``toy-00000.tar`` …); reuses existing shards."""
    root = Path(root)
    marker = root / "toy.json"
    spec = {"num_clips": num_clips, "per_shard": per_shard, "frames": frames, "size": size, "seed": seed}
    if marker.exists() and json.loads(marker.read_text()) == spec:
        return root
    root.mkdir(parents=True, exist_ok=True)
    for s in range(math.ceil(num_clips / per_shard)):
        tmp = root / f".toy-{s:05d}.tar.tmp"
        with tarfile.open(tmp, "w") as tar:
            for i in range(s * per_shard, min(num_clips, (s + 1) * per_shard)):
                clip, caption = toy_clip(seed * 100003 + i, frames, size)
                for suffix, data in ((".mp4", encode_mp4(clip)), (".json", json.dumps({"caption": caption}).encode())):
                    info = tarfile.TarInfo(f"{i:06d}{suffix}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        tmp.replace(root / f"toy-{s:05d}.tar")
    marker.write_text(json.dumps(spec))
    return root


# --- high-quality images for the discriminator --------------------------------------------------------

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def decode_image(data: bytes | str | Path) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data) as img:
        return np.asarray(img.convert("RGB"))


def crop_image(image: np.ndarray, size: int, rng: random.Random, scale=(0.5, 1.0)) -> torch.Tensor:
    """Random-resized square crop (official: scale 0.5-1) to ``size``², in [-1, 1]; refuses small images."""
    h, w = image.shape[:2]
    if min(h, w) < size:
        raise ValueError(f"image {w}×{h} is smaller than the {size}px crop")
    side = int(min(h, w) * math.sqrt(rng.uniform(*scale)))
    side = max(side, min(size, h, w))
    top, left = rng.randint(0, h - side), rng.randint(0, w - side)
    x = torch.from_numpy(np.array(image[top : top + side, left : left + side])).permute(2, 0, 1).float()
    x = F.interpolate(x[None] / 127.5 - 1.0, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x[0].clamp(-1, 1)


class ImageCaptions(_CaptionedStream):
    """Captioned images ``[3, size, size]`` from shards (``<key>.jpg|png|webp`` + caption) or a folder.
    Images smaller than the crop, or without a caption, are skipped and counted."""

    suffixes = IMAGE_SUFFIXES
    name = "image"

    def __init__(self, root: str | Path, size: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        self.size = size
        super().__init__(root, seed, rank, world_size)

    def _decode(self, media, rng):
        return crop_image(decode_image(media), self.size, rng)


def collate_images(items: list[dict]) -> dict:
    return _collate(items, "image")


def write_toy_image_shards(root: str | Path, num_images: int = 128, size: int = 32, seed: int = 0) -> Path:
    """The toy high-quality image set: clean single frames of the toy scenes, as PNG + caption shards."""
    from PIL import Image

    root = Path(root)
    marker = root / "toy-images.json"
    spec = {"num_images": num_images, "size": size, "seed": seed}
    if marker.exists() and json.loads(marker.read_text()) == spec:
        return root
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / ".images-00000.tar.tmp"
    with tarfile.open(tmp, "w") as tar:
        for i in range(num_images):
            clip, caption = toy_clip(seed * 100003 + 50000 + i, frames=1, size=size, degraded=False)
            buf = io.BytesIO()
            Image.fromarray(clip[0]).save(buf, format="PNG")
            for suffix, data in ((".png", buf.getvalue()), (".txt", caption.encode())):
                info = tarfile.TarInfo(f"{i:06d}{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    tmp.replace(root / "images-00000.tar")
    marker.write_text(json.dumps(spec))
    return root
