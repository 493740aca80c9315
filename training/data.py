"""Video data for distillation (and captioned images for the discriminator): webdataset shards or folders.

* **Shards** (how WebVid is usually packed): ``*.tar`` files whose samples are ``<key>.mp4`` +
  ``<key>.json`` (``{"caption": ...}``; ``.txt`` also accepted). Read with the standard library's
  ``tarfile``, so no webdataset package is needed.
* **Folder**: video files with a caption each, from ``captions.jsonl`` (``{"file", "caption"}`` per line)
  or a ``<name>.txt`` next to the video.
* **Images** for the frame discriminator's real side: ``<key>.jpg|png|webp`` + caption, the same two ways.

Clips are ``[3, frames, size, size]`` in [-1, 1]. A sample that cannot be decoded, is empty or too
short, or whose caption is missing, not UTF-8 or not text is skipped and counted by reason (``stats``,
and per batch), never a crash; so is a shard that cannot be read (``unreadable shard <name>``). What
stops a run: a ``captions.jsonl`` line naming no file (at start, naming file and line), a whole pass
with nothing usable, a loader worker that died (:func:`data_stopped`).
"""

from __future__ import annotations

import math
import random
import sys
import tarfile
import traceback
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import IterableDataset, get_worker_info

from training.samples import (
    CAPTION_SUFFIXES,
    DataError,
    SkipSample,
    caption_from_bytes,
    caption_reader,
    decode_image,
    decode_video,
    folder_captions,
)

VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".gif")


def select_clip(
    frames: np.ndarray, num_frames: int, interval: int, size: int, crop: str, rng: random.Random
) -> torch.Tensor:
    """``num_frames`` frames ``interval`` apart, cropped and resized to ``size``², in [-1, 1]."""
    span = (num_frames - 1) * interval + 1
    if len(frames) < span:
        raise SkipSample(
            "too short", f"{len(frames)} frames, {span} needed ({num_frames} frames × interval {interval})"
        )
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
    clip = F.interpolate(
        clip.permute(1, 0, 2, 3), size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )
    return clip.permute(1, 0, 2, 3).clamp(-1, 1).contiguous()


# --- datasets --------------------------------------------------------------------------------------


def tar_groups(shard: Path, read: bool = True):
    """``(key, {suffix: bytes})`` per sample of a webdataset shard (a sample's files are consecutive).

    With ``read=False`` the values are callables that read the bytes, so samples that are passed over
    cost only their tar headers (the file is seeked past their data); call them before the next sample.
    A shard cut short raises ``tarfile.ReadError`` where the cut is seen: in a file's data, or (a cut in a
    header, which ``tarfile`` takes for the end) after the last sample, for want of the end-of-archive block.
    """
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
            suffix = "." + name.name.split(".", 1)[-1].lower()
            parts[suffix] = tar.extractfile(member).read() if read else (lambda m=member: tar.extractfile(m).read())
        if parts:
            yield key, parts
        tar.fileobj.seek(tar.offset)  # where the end-of-archive block (512 zero bytes) must be
        if len(tar.fileobj.read(tarfile.BLOCKSIZE)) < tarfile.BLOCKSIZE:
            raise tarfile.ReadError("cut short (no end-of-archive block)")


class _CaptionedStream(IterableDataset):
    """Endless, shuffled, captioned samples from shards or a folder, split across processes and workers.

    The samples form one global stream, the same for any number of processes: epoch ``e`` visits the
    shards (or files) in an order shuffled from ``(seed, e)``, and sample ``i`` of the stream crops
    with a generator seeded from ``(seed, i)``. Process ``rank`` owns the blocks of ``block`` samples
    numbered ``rank, rank + world_size, …``, so with ``block`` = the per-process batch its k-th batch
    is the single-process run's micro-batch ``k·world_size + rank``. Within a process, worker ``w`` of
    ``W`` decodes the process's samples ``j ≡ w (mod W)``, so a DataLoader (``batch_size=None``) yields
    them in order. ``start`` skips the process's first samples without decoding them (resume).

    Every owned sample yields one item carrying ``position`` (the process's samples consumed so far): the
    sample, or ``{"skipped": 1, "reason": …}`` when it cannot be used (counted in ``stats`` per worker
    as ``skipped`` and ``skipped:<reason>``). A shard that cannot be read is one such item, counted as
    ``unreadable shard <name>`` each time an epoch reaches it (the samples before a cut are used). An
    epoch with nothing usable is a :class:`DataError`: raised here when iterated in-process; in a
    DataLoader worker, which sees only its share, :class:`Batches` judges the whole stream instead.
    """

    suffixes: tuple[str, ...] = ()
    name = "sample"

    def __init__(self, root, seed: int = 0, rank: int = 0, world_size: int = 1, block: int = 1, start: int = 0):
        self.root, self.seed, self.rank, self.world_size = Path(root), seed, rank, world_size
        self.block, self.start = block, start
        what = f"{self.name} dataset"
        if not self.root.exists():
            raise DataError(f"{self.root}: no such {what} (expected *.tar shards or a folder of {self.name}s)")
        self.shards = (
            sorted(self.root.glob("*.tar")) if self.root.is_dir() else [self.root] if self.root.suffix == ".tar" else []
        )
        self.files = [] if self.shards else sorted(p for p in self.root.rglob("*") if p.suffix.lower() in self.suffixes)
        if not self.shards and not self.files:
            raise DataError(f"{self.root}: empty {what}: no *.tar shards and no {self.name} files")
        self.captions = {} if self.shards else folder_captions(self.root)

    def _items(self, source):
        """``(key, read media or None, read caption or None)``; nothing read yet. A shard that cannot be
        read (not a tar, cut short) ends with one item whose readers raise ``unreadable shard <name>``."""
        if not self.shards:
            rel = source.relative_to(self.root).as_posix()
            yield rel, (lambda: source), caption_reader(self.captions, rel, source.with_suffix(".txt"))
            return
        try:
            for key, parts in tar_groups(source, read=False):
                media = next((parts[s] for s in parts if s in self.suffixes), None)
                text = next(((parts[s], s) for s in parts if s in CAPTION_SUFFIXES), None)
                yield key, media, (lambda t=text: caption_from_bytes(t[0](), t[1])) if text else None
        except (tarfile.TarError, OSError, EOFError) as exc:
            detail = "not a tar file" if "could not be opened" in str(exc) else str(exc).splitlines()[0]
            fail = SkipSample(f"unreadable shard {source.name}", detail)
            yield source.name, _raiser(fail), _raiser(fail)

    def _decode(self, media, rng: random.Random) -> torch.Tensor:
        raise NotImplementedError

    def _sample(self, i: int, key: str, media, text) -> dict:
        try:
            if media is None:
                raise SkipSample(f"no {self.name} file")
            if text is None:
                raise SkipSample("no caption")
            caption = text()
            value = self._decode(media(), random.Random(self.seed * 1000003 + i))
        except SkipSample as exc:
            return {"skipped": 1, "reason": exc.reason, "key": key, "detail": str(exc)}
        except tarfile.TarError as exc:  # a sample's bytes cut off by the end of its shard
            return {"skipped": 1, "reason": "cut off by the end of its shard", "key": key, "detail": str(exc)}
        except Exception as exc:  # noqa: BLE001 - any other failure of one sample is skipped and counted by its type
            return {"skipped": 1, "reason": type(exc).__name__, "key": key}
        return {self.name: value, "caption": caption, "key": key}

    def __iter__(self):
        worker = get_worker_info()
        wid, nworkers = (worker.id, worker.num_workers) if worker else (0, 1)
        self.stats = Counter()
        i = j = 0  # i: the global stream's sample index; j: this process's
        epoch, idle_epochs = 0, 0
        while True:
            order = list(self.shards or self.files)
            random.Random(self.seed * 1000003 + epoch).shuffle(order)
            owned_now = decoded_now = good_now = 0
            for source in order:
                for key, media, text in self._items(source):
                    owned = (i // self.block) % self.world_size == self.rank
                    i += 1
                    if not owned:
                        continue
                    j += 1
                    owned_now += 1
                    if j <= self.start or (j - 1) % nworkers != wid:
                        continue
                    decoded_now += 1
                    item = self._sample(i - 1, key, media, text)
                    if "skipped" in item:
                        if (
                            item["reason"].startswith("unreadable shard ")
                            and f"skipped:{item['reason']}" not in self.stats
                        ):
                            print(f"warning: {self.root}: {item['detail']}; skipped and counted", file=sys.stderr)
                        self.stats["skipped"] += 1
                        self.stats[f"skipped:{item['reason']}"] += 1
                    else:
                        self.stats["ok"] += 1
                        good_now += 1
                    yield {**item, "position": j, "epoch": epoch}
            epoch += 1
            problem = None
            if (
                worker is None and decoded_now and not good_now and not self.stats["ok"]
            ):  # workers: Batches judges them all
                problem = no_usable(
                    self.root,
                    self.name,
                    {k[len("skipped:") :]: v for k, v in self.stats.items() if k.startswith("skipped:")},
                )
            idle_epochs = 0 if owned_now else idle_epochs + 1
            if idle_epochs > self.block * self.world_size:
                problem = (
                    f"{self.root}: {i // epoch} samples per epoch, too few for {self.world_size} processes × "
                    f"{self.block}"
                )
            if problem and worker is None:
                raise DataError(problem)
            if (
                problem
            ):  # a worker hands it on as an item: torch re-raises a worker's error with its traceback in the message
                yield {"error": problem}
                return


def no_usable(root: Path, name: str, reasons: dict[str, int]) -> str:
    listed = ", ".join(f"{reason} × {n}" for reason, n in reasons.items())
    return f"{root}: no usable {name} in a whole pass over the data (skipped {sum(reasons.values())}: {listed})"


def _raiser(exc: Exception):
    def read():
        raise exc

    return read


class Batches:
    """Batches of ``size`` usable samples from a :class:`_CaptionedStream`, in the stream's order.

    Each batch is ``{name: stacked, "caption": [...], "skipped": n, "skip_reasons": {reason: n},
    "position": the process's samples consumed}``; ``position`` is what a resumed run passes back as
    ``start`` to continue with the next sample.
    """

    def __init__(self, dataset: _CaptionedStream, size: int, num_workers: int = 0):
        from torch.utils.data import DataLoader

        self.name, self.size, self.root = dataset.name, size, dataset.root
        self.loader = DataLoader(dataset, batch_size=None, num_workers=num_workers, persistent_workers=False)
        # worker processes start with the first batch, so that a worker dying during model setup surfaces in the
        # loop; in-process loading starts here, where creating the iterator draws its base seed from the global
        # torch RNG, before the models are built (moving that draw changed the toy run's numbers)
        self.items = iter(self.loader) if num_workers == 0 else None
        self.position = dataset.start
        self.good, self.reasons, self.first_epoch = 0, Counter(), None  # a whole pass with nothing usable stops the run

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        good, reasons = [], Counter()
        while len(good) < self.size:
            self.items = (
                self.items if self.items is not None else iter(self.loader)
            )  # workers start with the first batch
            item = next(self.items)
            if "error" in item:
                raise DataError(item["error"])
            self.first_epoch = item["epoch"] if self.first_epoch is None else self.first_epoch
            if (
                item["epoch"] > self.first_epoch + 1 and not self.good
            ):  # items come in stream order: a whole pass is over
                raise DataError(no_usable(self.root, self.name, dict(self.reasons)))
            self.position = int(item["position"])
            if "skipped" in item:
                reasons[item["reason"]] += 1
                self.reasons[item["reason"]] += 1
            else:
                good.append(item)
                self.good += 1
        return {
            self.name: torch.stack([g[self.name] for g in good]),
            "caption": [g["caption"] for g in good],
            "skipped": sum(reasons.values()),
            "skip_reasons": dict(reasons),
            "position": self.position,
        }


def data_stopped(exc: BaseException, root) -> tuple[DataError | None, bool]:
    """Whether ``exc`` means the data cannot go on, as a :class:`DataError` (a DataError, or a DataLoader
    worker process that died, e.g. of a crash in a decoder: torch raises that from its SIGCHLD handler
    wherever the main process is), and whether it was raised while a batch was fetched (so the training
    state between steps is consistent); ``(None, False)`` for any other error."""
    if isinstance(exc, DataError):
        error = exc
    elif isinstance(exc, RuntimeError) and str(exc).startswith("DataLoader worker"):
        error = DataError(
            f"{root}: a data loader worker died ({str(exc).splitlines()[0].split('. ')[0]}): a crash in a decoder "
            "(Python errors are skipped and counted); --num-workers 0 shows the sample that crashes"
        )
    else:
        return None, False
    fetching = any(frame.f_code is Batches.__next__.__code__ for frame, _ in traceback.walk_tb(exc.__traceback__))
    return error, fetching


class VideoClips(_CaptionedStream):
    """Clips ``[3, frames, size, size]`` from video shards (``<key>.mp4`` + caption) or a folder of videos."""

    suffixes = VIDEO_SUFFIXES
    name = "video"

    def __init__(
        self,
        root: str | Path,
        num_frames: int = 16,
        interval: int = 1,
        size: int = 512,
        crop: str = "random",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        block: int = 1,
        start: int = 0,
    ):
        if crop not in ("random", "center"):
            raise DataError(f"--crop {crop!r}; expected 'random' or 'center'")
        self.num_frames, self.interval, self.size, self.crop = num_frames, interval, size, crop
        super().__init__(root, seed, rank, world_size, block, start)

    def _decode(self, media, rng):
        return select_clip(decode_video(media), self.num_frames, self.interval, self.size, self.crop, rng)


# --- high-quality images for the discriminator --------------------------------------------------------

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def crop_image(image: np.ndarray, size: int, rng: random.Random, scale=(0.5, 1.0)) -> torch.Tensor:
    """Random-resized square crop (official: scale 0.5-1) to ``size``², in [-1, 1]; refuses small images."""
    h, w = image.shape[:2]
    if min(h, w) < size:
        raise SkipSample("image too small", f"image {w}×{h} is smaller than the {size}px crop")
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

    def __init__(
        self,
        root: str | Path,
        size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        block: int = 1,
        start: int = 0,
    ):
        self.size = size
        super().__init__(root, seed, rank, world_size, block, start)

    def _decode(self, media, rng):
        return crop_image(decode_image(media), self.size, rng)
