"""One sample of the training and evaluation data: decoding it, reading its caption, and why it is skipped.

The rule for bad input: a problem that belongs to one sample (a video that does not decode, a caption
that is not UTF-8, not text or empty) raises :class:`SkipSample`, and the sample is skipped and counted
under the exception's short ``reason``. A problem that belongs to no single sample stops at the start
with :class:`DataError` naming the file (and line): a ``captions.jsonl`` line that is not a JSON object
with a ``"file"`` string cannot be matched to a video, so the whole index is refused.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np

#: Suffixes of a sample's caption file in a shard (``.json`` is ``{"caption": ...}``, the others plain text).
CAPTION_SUFFIXES = (".json", ".txt", ".caption")
#: A ``captions.jsonl`` entry without a ``"caption"`` key (the video's ``.txt`` sidecar is used instead).
MISSING = object()


class DataError(ValueError):
    """A dataset that cannot be used at all (missing, empty, a broken index); single bad samples are skipped."""


class SkipSample(ValueError):
    """One sample that cannot be used; ``reason`` is the short name it is counted under."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


# --- media ------------------------------------------------------------------------------------------


def _rgb(frame) -> np.ndarray:
    """A decoded frame as ``uint8 [h, w, 3]``, converted on the calling thread: with PyAV's default, a pool of
    swscale slice threads, a process forked after its parent converted a frame (DataLoader workers are forked from
    the trainer) waited forever in the conversion (PyAV 18.1.1). Older PyAV versions take no ``threads`` argument."""
    try:
        return frame.to_ndarray(format="rgb24", threads=1)
    except TypeError:
        return frame.to_ndarray(format="rgb24")


def decode_video(data: bytes | str | Path) -> np.ndarray:
    """All frames of a video as ``uint8 [n, h, w, 3]`` (PyAV); :class:`SkipSample` if it cannot be read."""
    import av

    in_memory = isinstance(data, (bytes, bytearray))
    try:
        size = len(data) if in_memory else os.path.getsize(data)
    except OSError as exc:
        raise SkipSample("unreadable", exc.strerror or str(exc)) from None
    if size == 0:
        raise SkipSample("empty file", "0 bytes")
    source = io.BytesIO(data) if in_memory else str(data)
    try:  # metadata_errors: a tag that is not UTF-8 (the frames are all that is read) is no reason to fail
        with av.open(source, metadata_errors="replace") as container:
            frames = [_rgb(f) for f in container.decode(video=0)]
    except (av.error.FFmpegError, IndexError, OSError, ValueError) as exc:  # IndexError: no video stream
        raise SkipSample("undecodable", str(exc)) from None
    if not frames:
        raise SkipSample("no frames")
    return np.stack(frames)


def encode_mp4(frames: np.ndarray, fps: int = 8) -> bytes:
    """``uint8 [f, h, w, 3]`` frames as H.264 MP4 bytes (PyAV): how the toy sets and the tests write videos."""
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


def decode_image(data: bytes | str | Path) -> np.ndarray:
    """``uint8 [h, w, 3]`` (PIL); :class:`SkipSample` if it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data) as img:
            return np.asarray(img.convert("RGB"))
    except Image.DecompressionBombError as exc:  # a header declaring more pixels than PIL will decode
        raise SkipSample("image too large", str(exc)) from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise SkipSample("undecodable", str(exc)) from None


# --- captions ---------------------------------------------------------------------------------------


def check_caption(value, what: str) -> str:
    """``value`` if it is non-empty UTF-8 text; else :class:`SkipSample` ("bad caption", "caption not UTF-8",
    "no caption")."""
    if not isinstance(value, str):
        raise SkipSample("bad caption", f"{what} is a JSON {type(value).__name__}, not text")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes kept as surrogates (captions.jsonl)
        raise SkipSample("caption not UTF-8", what) from None
    if not value.strip():
        raise SkipSample("no caption", f"{what} is empty")
    return value


def caption_from_bytes(raw: bytes, suffix: str) -> str:
    """The caption in a caption file's bytes: UTF-8 text, or for ``.json`` an object's ``caption`` (or
    ``text``/``name``) string."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SkipSample("caption not UTF-8", f"{suffix} byte {exc.start}") from None
    if suffix != ".json":
        return check_caption(text, f"{suffix} caption").strip()
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SkipSample("bad caption", f"json: {exc}") from None
    if not isinstance(obj, dict):
        raise SkipSample("bad caption", f"json is a {type(obj).__name__}, not an object")
    key = next((k for k in ("caption", "text", "name") if k in obj), None)
    if key is None:
        raise SkipSample("no caption", "json has no 'caption'")
    return check_caption(obj[key], f"json {key!r}")


def folder_captions(root: Path) -> dict[str, object]:
    """``captions.jsonl`` of a folder dataset: ``{relative path: caption value}`` (:data:`MISSING` where a
    line has no ``"caption"``). Caption values are checked per sample (:func:`caption_reader`); a line that
    is not a JSON object with a ``"file"`` string is a :class:`DataError` naming the file and line."""
    index = Path(root) / "captions.jsonl"
    if not index.exists():
        return {}
    try:
        raw = index.read_bytes()
    except OSError as exc:
        raise DataError(f"{index}: cannot be read ({exc.strerror})") from None
    expected = 'expected one JSON object {"file": ..., "caption": ...} per line'
    captions = {}
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        text = line.decode(
            "utf-8-sig" if n == 1 else "utf-8", errors="surrogateescape"
        )  # bad bytes in a caption: that sample's skip
        try:
            item = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{index}:{n}: not JSON ({exc.msg} at column {exc.colno}); {expected}") from None
        except RecursionError:
            raise DataError(f"{index}:{n}: JSON nested too deeply to read; {expected}") from None
        if not isinstance(item, dict) or not isinstance(item.get("file"), str):
            got = (
                f"an object with 'file' = {item.get('file')!r}"
                if isinstance(item, dict)
                else f"a JSON {type(item).__name__}"
            )
            raise DataError(f"{index}:{n}: {got}; {expected}")
        captions[item["file"]] = item.get("caption", MISSING)
    return captions


def caption_reader(captions: dict[str, object], rel: str, sidecar: Path):
    """A callable returning the caption of the folder sample ``rel`` (its ``captions.jsonl`` entry, else
    the ``sidecar`` text file), raising :class:`SkipSample` when it is unusable; ``None`` if it has none."""
    value = captions.get(rel, MISSING)
    if value is not MISSING:
        return lambda: check_caption(value, f"captions.jsonl caption of {rel}").strip()
    if sidecar.exists():
        return lambda: caption_from_bytes(sidecar.read_bytes(), ".txt")
    return None
