"""The evaluator's inputs: folders of videos (files or folders of frames) with captions, and folders of images.
A video or image that cannot be used is skipped and listed ``{relative path: reason}`` (the evaluator writes
them to ``results.json``) rather than ending the evaluation; a folder with nothing usable is a clear error
naming it.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from training.data import IMAGE_SUFFIXES, VIDEO_SUFFIXES
from training.samples import DataError, SkipSample, caption_reader, decode_image, decode_video, folder_captions


def _frames_folder(frames: list[Path]) -> np.ndarray:
    images = [decode_image(p) for p in frames]
    if len({i.shape for i in images}) > 1:
        raise SkipSample("frames differ in size", str(sorted({i.shape for i in images})))
    return np.stack(images)


def _skip_note(root: Path, skipped: dict[str, str], kept: int, what: str, log) -> None:
    if skipped:
        reasons = Counter(detail.split(":")[0] for detail in skipped.values())
        log(
            f"warning: {root}: skipped {len(skipped)} of {len(skipped) + kept} {what} ({dict(reasons)}); listed in "
            "results.json"
        )


def read_videos(folder: str | Path, min_frames: int = 1, require_captions: bool = False, log=None):
    """Videos (mp4/gif/webm/…) and folders of frame images under ``folder``, sorted by path, with their
    captions (``captions.jsonl`` or ``<name>.txt`` sidecars, as the training data; ``None`` if absent) and
    the skipped ones ``{relative path: reason}``. A video that does not decode, is empty or has fewer
    than ``min_frames`` frames is skipped; so is one whose caption is missing or unusable when
    ``require_captions`` (CLIPSIM), else its caption is ``None``."""
    log = log or (lambda line: print(line, file=sys.stderr))
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder of videos")
    captions = folder_captions(root)
    videos, texts, skipped = [], [], {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
            read, sidecar = (lambda p=path: decode_video(p)), path.with_suffix(".txt")
        elif path.is_dir() and (frames := sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)):
            read, sidecar = (lambda f=frames: _frames_folder(f)), path.parent / f"{path.name}.txt"
        else:
            continue
        rel = path.relative_to(root).as_posix()
        try:
            video = read()
            if len(video) < min_frames:
                raise SkipSample("too few frames", f"{len(video)} frames, {min_frames} needed (--fvd-frames)")
            caption = _caption(captions, rel, sidecar, require_captions)
        except SkipSample as exc:
            skipped[rel] = str(exc)
            continue
        videos.append(video)
        texts.append(caption)
    _skip_note(root, skipped, len(videos), "videos", log)
    if not videos and skipped:
        raise DataError(f"{root}: no usable videos; skipped {json.dumps(skipped)}")
    if not videos:
        raise FileNotFoundError(
            f"{root}: no videos (expected {', '.join(VIDEO_SUFFIXES)} files or folders of {'/'.join(IMAGE_SUFFIXES)} "
            "frames)"
        )
    return videos, texts, skipped


def _caption(captions: dict, rel: str, sidecar: Path, required: bool) -> str | None:
    reader = caption_reader(captions, rel, sidecar)
    if reader is None and required:
        raise SkipSample("no caption", "CLIPSIM needs one (captions.jsonl or a <name>.txt sidecar)")
    try:
        return reader() if reader else None
    except SkipSample:
        if required:
            raise
        return None


def read_images(folder: str | Path, limit: int | None = None, log=None) -> tuple[list[np.ndarray], dict[str, str]]:
    """``uint8 [h, w, 3]`` images under ``folder`` (sorted; the first ``limit`` that decode) and the skipped
    ones ``{relative path: reason}``."""
    log = log or (lambda line: print(line, file=sys.stderr))
    root = Path(folder)
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if root.is_dir() else []
    if not paths:
        raise FileNotFoundError(f"{root}: no images (expected a folder of {', '.join(IMAGE_SUFFIXES)} files)")
    images, skipped = [], {}
    for path in paths:
        if limit is not None and len(images) >= limit:
            break
        try:
            images.append(decode_image(path))
        except SkipSample as exc:
            skipped[path.relative_to(root).as_posix()] = str(exc)
    _skip_note(root, skipped, len(images), "images", log)
    if not images:
        raise DataError(f"{root}: no usable images; skipped {json.dumps(skipped)}")
    return images, skipped
