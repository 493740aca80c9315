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


class VideoClips(IterableDataset):
    """Endless, shuffled clips from shards (``*.tar``) or a folder of videos; split across workers.

    ``stats`` (per worker process) counts decoded and skipped samples; skipped ones are also reported
    in each batch (``"skipped"``) so that the trainer can sum them across workers.
    """

    def __init__(self, root: str | Path, num_frames: int = 16, interval: int = 1, size: int = 512,
                 crop: str = "random", seed: int = 0, rank: int = 0, world_size: int = 1):  # fmt: skip
        self.root = Path(root)
        self.num_frames, self.interval, self.size, self.crop = num_frames, interval, size, crop
        self.seed, self.rank, self.world_size = seed, rank, world_size
        if crop not in ("random", "center"):
            raise DataError(f"--crop {crop!r}; expected 'random' or 'center'")
        if not self.root.exists():
            raise DataError(f"{self.root}: no such dataset (expected *.tar shards or a folder of videos)")
        self.shards = sorted(self.root.glob("*.tar")) if self.root.is_dir() else [self.root] if self.root.suffix == ".tar" else []
        self.videos = [] if self.shards else self._folder_items()
        if not self.shards and not self.videos:
            raise DataError(f"{self.root}: empty dataset: no *.tar shards and no videos with captions")

    def _folder_items(self) -> list[tuple[Path, str]]:
        captions = {}
        index = self.root / "captions.jsonl"
        if index.exists():
            for n, line in enumerate(index.read_text().splitlines(), 1):
                if line.strip():
                    try:
                        item = json.loads(line)
                        captions[item["file"]] = item["caption"]
                    except (json.JSONDecodeError, KeyError) as exc:
                        raise DataError(f"{index}:{n}: expected {{\"file\": ..., \"caption\": ...}} ({exc})") from None
        items = []
        for path in sorted(p for p in self.root.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES):
            rel = path.relative_to(self.root).as_posix()
            caption = captions.get(rel)
            if caption is None and path.with_suffix(".txt").exists():
                caption = path.with_suffix(".txt").read_text().strip()
            if caption is not None:
                items.append((path, caption))
        return items

    def _shard_samples(self, shard: Path):
        """``(key, video bytes, caption)`` per complete sample of a tar shard."""
        pending: dict[str, dict[str, bytes]] = {}
        with tarfile.open(shard) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                name = Path(member.name)
                key, suffix = str(name.parent / name.name.split(".")[0]), "." + name.name.split(".", 1)[-1]
                pending.setdefault(key, {})[suffix.lower()] = tar.extractfile(member).read()
                parts = pending[key]
                video = next((s for s in parts if s in VIDEO_SUFFIXES), None)
                text = next((s for s in parts if s in (".json", ".txt", ".caption")), None)
                if video and text:
                    del pending[key]
                    yield key, parts[video], (parts[text], text)

    def __iter__(self):
        worker = get_worker_info()
        wid, nworkers = (worker.id, worker.num_workers) if worker else (0, 1)
        shard_id, nshards = self.rank * nworkers + wid, self.world_size * nworkers
        rng = random.Random(self.seed * 1000003 + shard_id)
        self.stats = Counter()
        epoch = 0
        while True:
            sources = self.shards or self.videos
            mine = [s for i, s in enumerate(sources) if i % nshards == shard_id] or sources
            order = list(mine)
            rng.shuffle(order)
            produced = 0
            for source in order:
                samples = self._shard_samples(source) if self.shards else [(str(source[0]), source[0], None)]
                for key, video, text in samples:
                    try:
                        caption = source[1] if text is None else _caption_from(*text)
                        clip = select_clip(decode_video(video), self.num_frames, self.interval, self.size, self.crop, rng)
                    except Exception as exc:  # noqa: BLE001 - any bad sample is skipped and counted
                        self.stats["skipped"] += 1
                        self.stats[f"skipped:{type(exc).__name__}"] += 1
                        yield {"skipped": 1}
                        continue
                    self.stats["ok"] += 1
                    produced += 1
                    yield {"video": clip, "caption": caption, "key": key}
            epoch += 1
            if produced == 0:
                raise DataError(f"{self.root}: no sample could be decoded (skipped {self.stats['skipped']}); "
                                f"reasons: {dict((k, v) for k, v in self.stats.items() if k.startswith('skipped:'))}")  # fmt: skip


def collate(items: list[dict]) -> dict:
    good = [i for i in items if "video" in i]
    batch = {"skipped": sum(i.get("skipped", 0) for i in items)}
    if good:
        batch["video"] = torch.stack([i["video"] for i in good])
        batch["caption"] = [i["caption"] for i in good]
    return batch


# --- the synthetic toy world -----------------------------------------------------------------------

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 80, 220), "yellow": (230, 200, 40)}
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
SHAPES = ("square", "circle")


def toy_clip(seed: int, frames: int = 16, size: int = 32, degraded: bool = True) -> tuple[np.ndarray, str]:
    """One clip of a shape moving across a plain background, and its caption.

    ``degraded`` adds what web video has and a clean image set has not: blur, noise, low contrast
    and a watermark-like bar.
    """
    rng = np.random.default_rng(seed)
    colour = list(COLOURS)[rng.integers(len(COLOURS))]
    direction = list(DIRECTIONS)[rng.integers(len(DIRECTIONS))]
    shape = SHAPES[rng.integers(len(SHAPES))]
    speed = int(rng.integers(1, 3))
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
    x = torch.from_numpy(np.ascontiguousarray(image[top : top + side, left : left + side])).permute(2, 0, 1).float()
    x = F.interpolate(x[None] / 127.5 - 1.0, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x[0].clamp(-1, 1)


class ImageCaptions(IterableDataset):
    """Endless captioned images from ``*.tar`` shards (``<key>.jpg|png|webp`` + ``.txt|.json``) or a folder
    (``captions.jsonl`` or ``.txt`` sidecars). Bad, small or uncaptioned images are skipped and counted."""

    def __init__(self, root: str | Path, size: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        self.root, self.size, self.seed, self.rank, self.world_size = Path(root), size, seed, rank, world_size
        if not self.root.exists():
            raise DataError(f"{self.root}: no such image dataset (expected *.tar shards or a folder of images)")
        self.shards = sorted(self.root.glob("*.tar")) if self.root.is_dir() else []
        self.files = [] if self.shards else sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.shards and not self.files:
            raise DataError(f"{self.root}: empty image dataset: no *.tar shards and no images")
        captions = {}
        index = self.root / "captions.jsonl"
        if index.exists():
            for line in index.read_text().splitlines():
                if line.strip():
                    item = json.loads(line)
                    captions[item["file"]] = item["caption"]
        self.captions = captions

    def _samples(self, source):
        if self.shards:
            pending: dict[str, dict[str, bytes]] = {}
            with tarfile.open(source) as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    name = Path(member.name)
                    key, suffix = str(name.parent / name.name.split(".")[0]), "." + name.name.split(".", 1)[-1].lower()
                    pending.setdefault(key, {})[suffix] = tar.extractfile(member).read()
            for key, parts in pending.items():
                image = next((s for s in parts if s in IMAGE_SUFFIXES), None)
                text = next((s for s in parts if s in (".txt", ".json", ".caption")), None)
                yield key, parts.get(image), (parts[text], text) if text else None
        else:
            rel = source.relative_to(self.root).as_posix()
            caption = self.captions.get(rel)
            if caption is None and source.with_suffix(".txt").exists():
                caption = source.with_suffix(".txt").read_text().strip()
            yield rel, source, (caption.encode(), ".txt") if caption is not None else None

    def __iter__(self):
        worker = get_worker_info()
        wid, nworkers = (worker.id, worker.num_workers) if worker else (0, 1)
        shard_id, nshards = self.rank * nworkers + wid, self.world_size * nworkers
        rng = random.Random(self.seed * 7907 + shard_id)
        self.stats = Counter()
        while True:
            sources = self.shards or self.files
            order = [s for i, s in enumerate(sources) if i % nshards == shard_id] or list(sources)
            rng.shuffle(order)
            produced = 0
            for source in order:
                for key, data, text in self._samples(source):
                    try:
                        if data is None:
                            raise ValueError("no image")
                        if text is None:
                            raise KeyError("no caption")
                        caption = _caption_from(*text)
                        image = crop_image(decode_image(data), self.size, rng)
                    except Exception as exc:  # noqa: BLE001 - skipped and counted
                        self.stats["skipped"] += 1
                        self.stats[f"skipped:{type(exc).__name__}"] += 1
                        yield {"skipped": 1}
                        continue
                    produced += 1
                    yield {"image": image, "caption": caption}
            if produced == 0:
                raise DataError(f"{self.root}: no usable image (skipped {self.stats['skipped']}: "
                                f"{dict((k, v) for k, v in self.stats.items() if k.startswith('skipped:'))})")  # fmt: skip


def collate_images(items: list[dict]) -> dict:
    good = [i for i in items if "image" in i]
    batch = {"skipped": sum(i.get("skipped", 0) for i in items)}
    if good:
        batch["image"] = torch.stack([i["image"] for i in good])
        batch["caption"] = [i["caption"] for i in good]
    return batch


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
