"""Fuzz targets of the trainer's and the evaluator's input parsers (``tests/fuzz/judge.py`` judges every outcome).

* ``checkpoint folders``: a valid checkpoint (built once, cheaply, with :func:`training.checkpoints.write_checkpoint`)
  copied and damaged per example (bytes flipped, cut or replaced, files removed, duplicated, added or turned into
  folders, the manifest lying or not JSON, ``trainer_state.json`` of random JSON, ``rng_state.pt`` /
  ``optimizer.pt`` a pickle of an arbitrary object, the manifest rewritten to match), then fed to
  ``verify_checkpoint``, ``read_state`` and ``resolve_resume`` (the folder, and ``latest`` of its run).
* ``video shards`` / ``image shards``: webdataset ``.tar`` shards (random members, names, suffixes, nesting,
  folders, symlinks, random bytes, valid tiny mp4s / images, captions of random JSON and encodings; tars cut,
  flipped or not tars at all) and folder datasets (``captions.jsonl`` of random lines, ``.txt`` sidecars), read
  through :class:`training.data.VideoClips` / :class:`~training.data.ImageCaptions` and :class:`~training.data.Batches`
  (in-process) for a few batches.
* ``config and flags``: random YAML documents as ``--config`` and random command lines through
  :func:`training.config.parse_args` only (an accepted configuration never starts a run).
* ``evaluator inputs``: ``read_videos`` / ``read_images`` on folders of random files, ``read_prompts`` on random
  files, ``load_detector`` on random files named as the detectors.

Counting: parsers of one input (checkpoints, config, prompts, detectors) give one judged outcome per call; the data
loaders one per sample (a clip or image yielded: ``accepted``; a counted skip: ``skipped``) or one ``refused`` for a
dataset refused as a whole. Every example also checks that its input is unchanged (:func:`tree_hash`).
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import fractions
import functools
import io
import json
import pickle
import shutil
import struct
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from tests.fuzz.judge import fuzz_target, judge, tree_hash
from training import checkpoints as ck
from training import config as tc
from training import evaluate as ev
from training.data import IMAGE_SUFFIXES, VIDEO_SUFFIXES, Batches, ImageCaptions, VideoClips
from training.eval_inputs import read_images, read_videos
from training.prompts import read_prompts
from training.samples import DataError, encode_mp4


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz-training")


@contextlib.contextmanager
def example_dir(scratch: Path):
    """A fresh folder for one example, removed afterwards."""
    path = Path(tempfile.mkdtemp(dir=scratch))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def outcome(call, refusals: tuple[type[BaseException], ...]):
    """``("accepted", value)`` or ``("refused", message)`` for the project's own errors; anything else propagates
    (and fails the example with its traceback)."""
    try:
        return "accepted", call()
    except refusals as exc:
        return "refused", str(exc)


# --- shared generators ------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
captions = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["a red square moving left", "  ", "", "#", "\ufeffBOM", "caf\u00e9", "\x00", "line\nbreak"]),
)
ENCODINGS = ("utf-8", "utf-8-sig", "utf-16", "latin-1", "invalid")


def encode(text: str, encoding: str) -> bytes:
    if encoding == "invalid":  # not UTF-8: a lone continuation byte and a truncated sequence
        return b"\x80" + text.encode("utf-8", "surrogatepass") + b"\xc3"
    return text.encode(encoding, errors="surrogatepass" if encoding.startswith("utf") else "replace")


caption_files = st.one_of(
    st.tuples(st.just("text"), captions, st.sampled_from(ENCODINGS)),
    st.tuples(
        st.just("json"), st.fixed_dictionaries({}, optional={"caption": json_values | captions, "text": captions})
    ),
    st.tuples(st.just("json"), json_values),
    st.tuples(st.just("bytes"), st.binary(max_size=40)),
)


def caption_bytes(spec) -> bytes:
    kind, *rest = spec
    if kind == "text":
        return encode(rest[0], rest[1])
    if kind == "json":
        return json.dumps(rest[0]).encode()
    return rest[0]


corruptions = st.one_of(
    st.none(),
    st.tuples(st.just("cut"), st.floats(0, 1)),
    st.tuples(
        st.just("flip"),
        st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), min_size=1, max_size=6),
    ),
)


def corrupt(data: bytes, how) -> bytes:
    if how is None or not data:
        return data
    if how[0] == "cut":
        return data[: int(len(data) * how[1])]
    data = bytearray(data)
    for where, mask in how[1]:
        data[int(where * len(data))] ^= mask
    return bytes(data)


@functools.cache
def mp4s() -> list[bytes]:
    """Valid tiny H.264 mp4s: 1-4 frames at 16 px, and a non-square one."""
    rng = np.random.default_rng(0)
    shapes = [(1, 16, 16), (2, 16, 16), (3, 16, 16), (4, 16, 16), (4, 8, 24)]
    return [encode_mp4(rng.integers(0, 256, (f, h, w, 3), dtype=np.uint8)) for f, h, w in shapes]


def gif(frames: int, size: int, seed: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(frames)]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:])
    return buf.getvalue()


def image(fmt: str, width: int, height: int, mode: str, seed: int) -> bytes:
    """A small valid image file (PIL) of random pixels."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    img = Image.fromarray(pixels).convert(mode)
    buf = io.BytesIO()
    try:
        img.save(buf, format=fmt)
    except (OSError, KeyError, ValueError):  # a mode this format cannot store
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format=fmt)
    return buf.getvalue()


def png_header(width: int, height: int, payload: bytes) -> bytes:
    """A PNG whose IHDR (with a valid CRC) declares ``width`` x ``height``, followed by ``payload`` as its data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(payload)) + chunk(b"IEND", b"")


images = st.one_of(
    st.tuples(
        st.sampled_from(["PNG", "JPEG", "WEBP", "GIF", "BMP"]),
        st.integers(1, 40),
        st.integers(1, 40),
        st.sampled_from(["RGB", "L", "RGBA", "P", "LA", "1", "I", "CMYK"]),
        st.integers(0, 9),
        corruptions,
    ).map(lambda t: ("image", *t)),
    st.tuples(
        st.just("png header"),
        st.sampled_from([0, 1, 16, 64, 2**16, 2**31 - 1, 2**32 - 1]),
        st.sampled_from([0, 1, 16, 64, 2**16, 2**31 - 1, 2**32 - 1]),
        st.binary(max_size=64),
    ),
    st.tuples(st.just("bytes"), st.binary(max_size=200)),
    st.just(("empty",)),
)


def image_bytes(spec) -> bytes:
    kind, *rest = spec
    if kind == "image":
        fmt, w, h, mode, s, how = rest
        return corrupt(image(fmt, w, h, mode, s), how)
    if kind == "png header":
        return png_header(*rest)
    return rest[0] if kind == "bytes" else b""


videos = st.one_of(
    st.tuples(st.just("mp4"), st.integers(0, 4), corruptions),
    st.tuples(st.just("gif"), st.integers(1, 4), st.sampled_from([8, 16]), st.integers(0, 9)),
    st.tuples(st.just("bytes"), st.binary(max_size=200)),
    st.just(("empty",)),
    images,
)


def video_bytes(spec) -> bytes:
    kind, *rest = spec
    if kind == "mp4":
        return corrupt(mp4s()[rest[0]], rest[1])
    if kind == "gif":
        return gif(*rest)
    return image_bytes(spec)


NAME_ALPHABET = "abcxyz019._- \u00e9"
keys = st.text(NAME_ALPHABET, min_size=1, max_size=6).filter(lambda k: k.strip(" .") and "/" not in k)
nested_keys = st.lists(keys, min_size=1, max_size=3).map("/".join)


# --- 1. checkpoint folders ---------------------------------------------------------------------------------------


class WritesMarker:
    """Unpickling this object runs code: it creates the file ``marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def crafted_objects(marker: Path) -> list:
    """Objects whose pickle names globals besides tensors and plain values (``torch.load(weights_only=True)``
    refuses each: checked below)."""
    return [
        WritesMarker(marker),
        Path("x"),
        range(3),
        slice(1, 2),
        datetime.date(2020, 1, 1),
        fractions.Fraction(1, 3),
        np.zeros(2),
        frozenset([1]),
        collections.defaultdict(int),
        torch.nn.Linear(1, 1),
    ]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """``run/checkpoint-2`` as the trainer writes it, from small parts (no training run)."""
    from safetensors.torch import save_file

    def parts(tmp: Path) -> None:
        (tmp / "peft").mkdir()
        save_file({"base_model.lora_A.weight": torch.zeros(2, 4)}, str(tmp / "peft" / "adapter_model.safetensors"))
        (tmp / "peft" / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 2}))
        save_file({"lora.down": torch.ones(2, 3)}, str(tmp / "adapter.safetensors"), metadata={"style": "fuzz"})
        save_file({"online.w": torch.ones(2), "target.w": torch.ones(2)}, str(tmp / "trainable_extra.safetensors"))
        param = torch.nn.Parameter(torch.zeros(2))
        optimizer = torch.optim.AdamW([param], lr=1e-3)
        param.grad = torch.ones(2)
        optimizer.step()
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": None}
        torch.save({**state, "adversary": None}, tmp / "optimizer.pt")

    run = tmp_path_factory.mktemp("checkpoint") / "run"
    run.mkdir()
    state = {"global_step": 2, "micro_batches": 2, "data_positions": [2], "args": {"seed": 0}}
    ck.write_checkpoint(run / "checkpoint-2", parts, state, [ck.rng_state()])
    ck.verify_checkpoint(run / "checkpoint-2")
    for obj in crafted_objects(run.parent / "marker"):  # the generator's premise: each is refused
        buf = io.BytesIO()
        torch.save(obj, buf)
        buf.seek(0)
        with pytest.raises(pickle.UnpicklingError):
            torch.load(buf, weights_only=True)
    assert not (run.parent / "marker").exists()
    return run / "checkpoint-2"


def files_of(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink())


new_names = st.one_of(
    st.sampled_from(
        [
            "x.json",
            "copy.pt",
            "peft/extra.safetensors",
            "rng_state.pt.bak",
            "sub/dir/f.bin",
            "trainer_state.json~",
            "manifest.json.old",
            "a.safetensors",
            "optimizer.pt",
            "rng_state.pt",
            "trainer_state.json",
            "peft/adapter_model.safetensors",
        ]
    ),
    st.tuples(
        st.lists(keys, min_size=1, max_size=2).map("/".join), st.sampled_from(["", ".json", ".pt", ".safetensors"])
    ).map("".join),
)
listed_names = st.one_of(
    new_names,
    st.sampled_from(["../x", "/etc/hostname", "a" * 300, "x\x00y", "peft", "", ".", "peft/../optimizer.pt", "a/" * 50]),
)
entries = st.one_of(
    json_values,
    st.fixed_dictionaries({"size": st.integers(-1, 10**6) | json_values, "sha256": st.text(max_size=64) | json_values}),
)
manifest_edits = st.one_of(
    st.tuples(st.just("raw"), st.binary(max_size=80)),
    st.tuples(st.just("json"), json_values),
    st.tuples(st.just("deep"), st.sampled_from([10, 1000, 100_000])),
    st.tuples(st.just("entry"), st.integers(0, 99), entries),
    st.tuples(st.just("size"), st.integers(0, 99), st.integers(-2, 2)),
    st.tuples(st.just("sha"), st.integers(0, 99), st.text("0123456789abcdef", max_size=64)),
    st.tuples(st.just("rename"), st.integers(0, 99), listed_names),
    st.tuples(st.just("add"), listed_names, entries),
    st.tuples(st.just("drop"), st.integers(0, 99)),
    st.tuples(st.just("files"), json_values),
    st.tuples(st.just("format"), json_values),
)
states = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"global_step": st.integers() | json_values},
        optional={"args": json_values, "data_positions": json_values, "num_processes": json_values},
    ),
    st.binary(max_size=40),
)
checkpoint_ops = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 99), corruptions.filter(lambda c: c is not None)),
    st.tuples(st.just("replace"), st.integers(0, 99), st.binary(max_size=300)),
    st.tuples(st.just("remove"), st.integers(0, 99)),
    st.tuples(st.just("duplicate"), st.integers(0, 99), new_names),
    st.tuples(st.just("extra"), new_names, st.binary(max_size=100)),
    st.tuples(st.just("to folder"), st.integers(0, 99)),
    st.tuples(st.just("manifest"), manifest_edits),
    st.tuples(st.just("state"), states),
    st.tuples(st.just("pickle"), st.sampled_from([ck.RNG_FILE, "optimizer.pt"]), st.integers(0, 9), st.integers(0, 2)),
    st.just(("rewrite manifest",)),
)


def edit_manifest(path: Path, edit) -> None:
    kind, *rest = edit
    if kind == "raw":
        path.write_bytes(rest[0])
        return
    if kind == "json":
        path.write_text(json.dumps(rest[0]))
        return
    if kind == "deep":
        path.write_text("[" * rest[0] + "]" * rest[0])
        return
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        files = manifest["files"]
        names = sorted(files)
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return  # an earlier step broke it: nothing to edit
    if not isinstance(files, dict):  # an earlier step replaced the files table (with a string, a list …)
        files, names = {}, []
    if kind == "files":
        manifest["files"] = rest[0]
    elif kind == "format":
        manifest["format"] = rest[0]
    elif kind == "add":
        files[rest[0]] = rest[1]
    elif names:
        name = names[rest[0] % len(names)]
        if kind == "entry":
            files[name] = rest[1]
        elif kind == "size" and isinstance(files[name], dict) and isinstance(files[name].get("size"), int):
            files[name]["size"] += rest[1]
        elif kind == "sha" and isinstance(files[name], dict):
            files[name]["sha256"] = rest[1]
        elif kind == "rename":
            files[rest[1]] = files.pop(name)
        elif kind == "drop":
            del files[name]
    path.write_text(json.dumps(manifest))


def place(folder: Path, name: str, data: bytes) -> bool:
    """Write ``data`` as ``folder/name`` unless a folder or a file is in the way; whether it was written."""
    target = folder / name
    if target.is_dir() or any(p.is_file() for p in target.parents if folder in p.parents):
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return True


def crafted_pickle(which: int, how: int, marker: Path) -> bytes:
    obj = crafted_objects(marker)[which]
    if how == 1:  # inside the structure the readers expect
        obj = {"format": ck.RNG_FORMAT, "processes": [{"torch": obj}], "optimizer": {"x": obj}, "scheduler": {}}
    if how == 2:  # a plain pickle, not torch's zip format
        return pickle.dumps(obj)
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


PICKED = ("flip", "replace", "remove", "duplicate", "to folder")  # the steps that pick one of the files


def apply_op(folder: Path, op, marker: Path, crafted: set[str]) -> dict[str, bool]:
    """One damaging step: ``{name: whether a crafted pickle now lies there}`` for each name it wrote or removed."""
    kind, *rest = op
    if kind in PICKED:
        present = [n for n in files_of(folder) if (folder / n).is_file()]
        if not present:
            return {}
        pick = present[rest[0] % len(present)]
        path = folder / pick
        if kind == "duplicate":
            return {rest[1]: pick in crafted} if place(folder, rest[1], path.read_bytes()) else {}
        if kind == "flip":
            path.write_bytes(corrupt(path.read_bytes(), rest[1]))
        elif kind == "replace":
            path.write_bytes(rest[1])
        else:
            path.unlink()
            if kind == "to folder":
                path.mkdir()
        return {pick: False}
    if kind == "extra":
        return {rest[0]: False} if place(folder, rest[0], rest[1]) else {}
    if kind == "state":
        data = rest[0] if isinstance(rest[0], bytes) else json.dumps(rest[0]).encode()
        return {"trainer_state.json": False} if place(folder, "trainer_state.json", data) else {}
    if kind == "pickle":
        return {rest[0]: True} if place(folder, rest[0], crafted_pickle(rest[1], rest[2], marker)) else {}
    if kind == "manifest":
        if not (folder / ck.MANIFEST).is_dir():
            edit_manifest(folder / ck.MANIFEST, rest[0])
    elif not (folder / ck.MANIFEST).is_dir():  # whoever damaged the files also made the manifest match them
        ck.write_manifest(folder)
    return {}


def damage(folder: Path, ops, marker: Path) -> set[str]:
    """Apply ``ops`` to ``folder``; the names where a crafted pickle lies at the end."""
    crafted: set[str] = set()
    for op in ops:
        for name, is_crafted in apply_op(folder, op, marker, crafted).items():
            (crafted.add if is_crafted else crafted.discard)(name)
    return crafted


@fuzz_target()
@given(ops=st.lists(checkpoint_ops, min_size=1, max_size=4))
# a manifest an earlier step broke (files a string or a list, nested past the JSON parser's depth), edited again
@example(ops=[("manifest", ("files", "0")), ("manifest", ("entry", 0, None))])
@example(ops=[("manifest", ("files", [None])), ("manifest", ("sha", 0, ""))])
@example(ops=[("manifest", ("deep", 100000)), ("manifest", ("size", 0, 0))])
def test_checkpoint_folders(checkpoint, scratch, ops):
    with example_dir(scratch) as root:
        run = root / "out" / "run"
        folder = Path(shutil.copytree(checkpoint, run / checkpoint.name))
        original = {n: (folder / n).read_bytes() for n in files_of(folder)}
        marker = root / "marker"
        crafted = damage(folder, ops, marker)
        before = tree_hash(root / "out")
        names = set(original) | set(files_of(folder)) | {ck.MANIFEST}
        with contextlib.suppress(Exception):
            names |= set(json.loads((folder / ck.MANIFEST).read_text(encoding="utf-8"))["files"])
        names = [f"{folder.name}/{n}" for n in names] + [str(run)]
        logs: list[str] = []

        verified, message = outcome(lambda: ck.verify_checkpoint(folder), (ck.CorruptCheckpoint,))
        judge("checkpoint folders", verified, message, names)
        read, message = outcome(lambda: ck.read_state(folder), (ck.CorruptCheckpoint,))
        judge("checkpoint folders", read, message, names)
        if read == "accepted":
            state, rngs = message
            assert isinstance(state, dict) and isinstance(state.get("global_step"), int), state
            assert rngs is None or all(isinstance(r["torch"], torch.Tensor) for r in rngs)
        refusals = (ck.CorruptCheckpoint, FileNotFoundError)
        for resume in (str(folder), "latest"):
            resumed, message = outcome(
                lambda r=resume: ck.resolve_resume(r, str(run.parent), "run", logs.append), refusals
            )
            judge("checkpoint folders", resumed, message, names)
            assert resumed == verified, (resume, resumed, verified, message)  # only a folder that verifies resumes
            if resumed == "accepted":
                assert message == folder

        assert not marker.exists(), "a pickle in the checkpoint ran code"
        if "optimizer.pt" in crafted:
            assert verified == "refused"
        if ck.RNG_FILE in crafted:
            assert "refused" in (verified, read)
        manifest = folder / ck.MANIFEST
        unchanged = manifest.is_file() and manifest.read_bytes() == original[ck.MANIFEST]
        if unchanged and any(not (folder / n).is_file() or (folder / n).read_bytes() != b for n, b in original.items()):
            assert verified == "refused", "a file the manifest lists changed, and the checkpoint verified"
        assert all("\n" not in line and "Traceback" not in line for line in logs), logs
        assert tree_hash(root / "out") == before, "resolving the checkpoint changed the run folder"


# --- 2 and 3. video and image datasets -------------------------------------------------------------------------

CAPTION_SUFFIXES = [".json", ".txt", ".caption"]
#: media that decode: tiny mp4s of 2-4 frames, images of at least 16 px (by the first media suffix of the target)
GOOD = {
    ".mp4": [("mp4", i, None) for i in (1, 2, 3, 4)] + [("gif", 3, 16, 0)],
    ".png": [("image", f, 16 + i, 20, "RGB", i, None) for i, f in enumerate(["PNG", "JPEG", "WEBP"])],
}
OTHER_SUFFIXES = ["", ".cls", ".json.gz", ".tar", ".MP4", ".Json", ".mp4.json", ".jsonl"]


def member_content(media):
    return st.one_of(
        st.tuples(st.just("media"), media),
        st.tuples(st.just("caption"), caption_files),
    )


def sample_groups(media, media_suffixes: list[str]):
    """One sample's files: often a valid one (media that decodes and a caption), else a media file and a caption
    file of any content, or anything."""
    good = st.tuples(keys, st.sampled_from(media_suffixes), st.sampled_from(GOOD[media_suffixes[0]]), captions).map(
        lambda t: [(t[0] + t[1], ("media", t[2])), (t[0] + ".json", ("caption", ("json", {"caption": t[3] + "x"})))]
    )
    usual = st.tuples(
        keys,
        st.sampled_from(media_suffixes),
        media,
        st.sampled_from(CAPTION_SUFFIXES),
        caption_files,
    ).map(lambda t: [(t[0] + t[1], ("media", t[2])), (t[0] + t[3], ("caption", t[4]))])
    anything = st.lists(
        st.tuples(
            st.tuples(nested_keys, st.sampled_from(media_suffixes + CAPTION_SUFFIXES + OTHER_SUFFIXES)).map("".join),
            member_content(media),
        ),
        min_size=1,
        max_size=3,
    )
    return st.one_of(good, good, usual, anything)


special_members = st.one_of(
    st.tuples(st.just("dir"), nested_keys),
    st.tuples(st.just("symlink"), nested_keys, st.sampled_from(["../../etc/hostname", "a.mp4", "/dev/zero", "x"])),
    st.tuples(st.just("hardlink"), nested_keys, st.sampled_from(["a.mp4", "missing"])),
    st.tuples(st.just("fifo"), nested_keys),
)


def content_bytes(content, to_media) -> bytes:
    kind, spec = content
    return to_media(spec) if kind == "media" else caption_bytes(spec)


def tar_bytes(groups, specials, to_media, fmt: int) -> bytes:
    """A tar of the groups' files, with the special members (folders, links, FIFOs) between them."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        members = [(name, content) for group in groups for name, content in group]
        for i, (name, content) in enumerate(members + [("", None)] * len(specials)):
            if specials and i % 2 == 0:
                kind, path, *target = specials.pop()
                info = tarfile.TarInfo(path)
                info.type = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE}.get(
                    kind, tarfile.FIFOTYPE
                )
                info.linkname = target[0] if target else ""
                tar.addfile(info)
            if content is not None:
                data = content_bytes(content, to_media)
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def shards(media, media_suffixes):
    return st.lists(
        st.tuples(
            st.lists(sample_groups(media, media_suffixes), max_size=4),
            st.lists(special_members, max_size=2),
            st.sampled_from([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT]),
            st.one_of(
                st.none(),
                st.none(),
                corruptions,
                st.tuples(st.just("not a tar"), st.binary(max_size=600)),
                st.just(("empty",)),
            ),
            st.sampled_from(["a.tar", "b.tar", "c.tar", "x.TAR", "d.tar.gz", "sub/e.tar"]),
        ),
        min_size=1,
        max_size=3,
    )


def jsonl_lines(file_names: list[str]):
    entry = st.fixed_dictionaries(
        {"file": st.sampled_from(file_names) if file_names else st.text(max_size=5)},
        optional={"caption": json_values | captions},
    )
    return st.lists(
        st.one_of(
            entry.map(lambda e: json.dumps(e).encode()),
            entry.map(lambda e: json.dumps(e, ensure_ascii=False).encode("utf-8", "surrogatepass")),
            json_values.map(lambda v: json.dumps(v).encode()),
            st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b"")),
            st.sampled_from([b"", b"   ", b"\xef\xbb\xbf{}", b"[" * 5000]),
        ),
        max_size=5,
    )


def folder_files(media, media_suffixes):
    """Files of a folder dataset: valid media with a ``.txt`` sidecar, or any file under any name."""
    good = st.tuples(nested_keys, st.sampled_from(media_suffixes), st.sampled_from(GOOD[media_suffixes[0]]), captions)
    good = good.map(
        lambda t: [(t[0] + t[1], ("media", t[2])), (t[0] + ".txt", ("caption", ("text", t[3] + "x", "utf-8")))]
    )
    anything = st.tuples(
        st.tuples(nested_keys, st.sampled_from(media_suffixes + [".txt"] + OTHER_SUFFIXES)).map("".join),
        member_content(media),
    ).map(lambda t: [t])
    return st.lists(st.one_of(good, anything), min_size=1, max_size=5).map(lambda groups: sum(groups, []))


def write_tree(root: Path, files, to_media) -> list[str]:
    """Write ``files`` under ``root`` (a name whose folder is already a file is left out); the names written."""
    written = []
    for name, content in files:
        path = root / name
        if path.exists() or any(p.is_file() for p in path.parents if root in p.parents):
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content_bytes(content, to_media))
        written.append(name)
    return written


def folder_symlinks(root: Path, links, names: list[str]) -> None:
    for name, target in links:
        path = root / name
        if path.exists() or path.is_symlink() or any(p.is_file() for p in path.parents if root in p.parents):
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(target if target != "@file" or not names else root / names[0])


symlinks = st.lists(
    st.tuples(
        st.tuples(keys, st.sampled_from([".mp4", ".png", ".txt", ""])).map("".join),
        st.sampled_from(["missing", "@file", "."]),
    ),
    max_size=2,
)


def dataset(media, media_suffixes):
    """``("shards", [...])``, ``("one shard", [...])`` or ``("folder", files, data, symlinks)`` (``data`` draws the
    ``captions.jsonl`` lines once the file names are known)."""
    return st.one_of(
        st.tuples(st.just("shards"), shards(media, media_suffixes)),
        st.tuples(st.just("one shard"), shards(media, media_suffixes).map(lambda s: s[:1])),
        st.tuples(st.just("folder"), folder_files(media, media_suffixes), st.data(), symlinks),
    )


def build_dataset(root: Path, spec, to_media) -> Path:
    """The dataset of ``spec`` under ``root``; the path to give the loader."""
    kind, *rest = spec
    root.mkdir()
    if kind == "folder":
        files, data, links = rest
        names = write_tree(root, files, to_media)
        lines = data.draw(st.one_of(st.none(), jsonl_lines(names)), label="captions.jsonl")
        if lines is not None:
            (root / "captions.jsonl").write_bytes(b"\n".join(lines) + b"\n")
        folder_symlinks(root, links, names)
        return root
    for groups, specials, fmt, damage_, name in rest[0]:
        path = root / name
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        data = tar_bytes(groups, list(specials), to_media, fmt)
        if damage_ is not None and damage_[0] == "not a tar":
            data = damage_[1]
        elif damage_ == ("empty",):
            data = b""
        else:
            data = corrupt(data, damage_)
        path.write_bytes(data)
    if kind == "one shard":
        return root / rest[0][0][4]
    return root


loader_settings = st.fixed_dictionaries(
    {
        "batch": st.integers(1, 2),
        "batches": st.integers(1, 3),
        "seed": st.integers(0, 3),
        "start": st.sampled_from([0, 0, 1, 3]),
        "layout": st.sampled_from([(0, 1, 1), (0, 1, 1), (1, 2, 1), (0, 2, 2)]),  # rank, world size, block
    }
)


def judge_loader(target: str, make, settings: dict, root: Path, key: str, shape: tuple) -> None:
    """Read ``settings["batches"]`` batches from the dataset ``make()`` builds: each sample yielded is accepted,
    each skip counted by its reason; a :class:`DataError` (at the start or for a whole pass) refuses the dataset."""
    names = [str(root)]
    try:
        batches = Batches(make(), settings["batch"], num_workers=0)
        for _ in range(settings["batches"]):
            batch = next(batches)
            assert batch[key].shape == (settings["batch"], *shape) and torch.isfinite(batch[key]).all()
            assert batch[key].min() >= -1 and batch[key].max() <= 1
            assert all(isinstance(c, str) and c.strip() for c in batch["caption"]), batch["caption"]
            assert batch["skipped"] == sum(batch["skip_reasons"].values())
            for reason, n in batch["skip_reasons"].items():
                assert isinstance(reason, str) and reason.strip() and "\n" not in reason, reason
                for _ in range(n):
                    judge(target, "skipped", reason)
            for _ in batch["caption"]:
                judge(target, "accepted")
    except DataError as exc:
        judge(target, "refused", str(exc), names)


@fuzz_target()
@given(spec=dataset(videos, [".mp4", ".webm", ".gif", ".mkv", ".avi", ".mov"]), settings=loader_settings)
def test_video_shards(scratch, spec, settings):
    with example_dir(scratch) as tmp:
        path = build_dataset(tmp / "data", spec, video_bytes)
        before = tree_hash(tmp / "data")
        crop = "random" if settings["seed"] % 2 else "center"
        rank, world, block = settings["layout"]

        def make():
            return VideoClips(path, 2, 1, 16, crop, settings["seed"], rank, world, block, settings["start"])

        judge_loader("video shards", make, settings, path, "video", (3, 2, 16, 16))
        assert tree_hash(tmp / "data") == before, "reading the dataset changed it"


@fuzz_target()
@given(spec=dataset(images, [".png", ".jpg", ".jpeg", ".webp", ".PNG"]), settings=loader_settings)
def test_image_shards(scratch, spec, settings):
    with example_dir(scratch) as tmp:
        path = build_dataset(tmp / "data", spec, image_bytes)
        before = tree_hash(tmp / "data")
        rank, world, block = settings["layout"]

        def make():
            return ImageCaptions(path, 16, settings["seed"], rank, world, block, settings["start"])

        judge_loader("image shards", make, settings, path, "image", (3, 16, 16))
        assert tree_hash(tmp / "data") == before, "reading the dataset changed it"


# --- 4. config and flags -------------------------------------------------------------------------------------------

FLAGS = {name: tc.flag_name(name) for name in tc.FIELDS}
BOOL_FLAGS = [name for name, f in tc.FIELDS.items() if f.metadata["kind"] is bool]
SCALAR_TEXTS = [
    "yes", "no", "on", "off", "~", "null", "true", "0", "-1", "1e5", "1e999", ".inf", "-.inf", ".nan", "0x1F", "0o17",
    "1_000", "2020-13-45", "2001-12-14t21:59:43.10-05:00", "12:30:00", "2,5,8,11", "2,x", "\u00b2", "--5", "4;50",
    "1" * 400, "9" * 5000, "tiny", "toy", "huber", "images", "'quoted'", "!!binary AAA", "!!python/object:os.system x",
    "&a [1, *a]", "[4", "{a: 1", "|\n  text", "\"\\x00\"", "\"\\u2028\"",
]  # fmt: skip
yaml_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**300, max_value=10**400),
    st.floats(),
    st.text(max_size=12),
    st.dates(),
    st.binary(max_size=8),
    st.sampled_from(list(tc.LR_SCHEDULERS) + ["fp16", "hinge", "center", "learn", "v_prediction"]),
)
yaml_values = st.recursive(
    yaml_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
flag_keys = st.sampled_from(sorted(tc.FIELDS)).flatmap(
    lambda name: st.sampled_from([name, name.replace("_", "-"), name.upper(), name + "_", f"--{name}"])
)


def typed_value(name: str):
    """A value of the flag's own type (in or out of its range, within its choices or not)."""
    meta = tc.FIELDS[name].metadata
    if meta["choices"]:
        return st.sampled_from(meta["choices"]) | st.text(max_size=4)
    kind = meta["kind"]
    if kind is bool:
        return st.booleans()
    if kind is int:
        return st.integers(-2, 70)
    if kind is float:
        return st.floats(-1, 20) | st.sampled_from([0.0, 0.5, 1.0])
    return st.sampled_from(["tiny", "2,5", "4,50", "", "x", "toy", "prompts.txt", "out", "a" * 300]) | st.text(
        max_size=6
    )


typed_pairs = st.sampled_from(sorted(set(tc.FIELDS) - {"config", "resume"})).flatmap(
    lambda name: st.tuples(st.sampled_from([name, name.replace("_", "-")]), typed_value(name))
)
yaml_keys = st.one_of(flag_keys, flag_keys, st.text(max_size=10), st.integers(), st.booleans(), st.none())


def yaml_line(key, text: str) -> str:
    return f"{key}: {text}"


yaml_documents = st.one_of(
    st.tuples(st.just("mapping"), st.lists(typed_pairs, max_size=4).map(dict), st.booleans()),
    st.tuples(st.just("mapping"), st.lists(typed_pairs, max_size=4).map(dict), st.booleans()),
    st.tuples(st.just("mapping"), st.dictionaries(yaml_keys, yaml_values, max_size=5), st.booleans()),
    st.tuples(st.just("value"), yaml_values),
    st.tuples(
        st.just("lines"),
        st.lists(st.tuples(flag_keys, st.one_of(st.sampled_from(SCALAR_TEXTS), st.text(max_size=10))), max_size=5),
    ),
    st.tuples(st.just("duplicate"), flag_keys, st.sampled_from(SCALAR_TEXTS), st.sampled_from(SCALAR_TEXTS)),
    st.tuples(st.just("text"), st.text(max_size=60)),
    st.tuples(st.just("bytes"), st.binary(max_size=60)),
    st.tuples(st.just("deep"), st.sampled_from([10, 5000])),
)


def yaml_bytes(doc) -> tuple[bytes, list[str], bool]:
    """The file's bytes, the flags it names, and whether it gives one key twice."""
    kind, *rest = doc
    if kind == "mapping":
        text = yaml.safe_dump(rest[0], allow_unicode=rest[1], sort_keys=False)
        return text.encode("utf-8"), [str(k) for k in rest[0]], False
    if kind == "value":
        return yaml.safe_dump(rest[0]).encode(), [], False
    if kind == "lines":
        return (
            "\n".join(yaml_line(k, v) for k, v in rest[0]).encode("utf-8", "surrogatepass"),
            [k for k, _ in rest[0]],
            False,
        )
    if kind == "duplicate":
        key, first, second = rest
        return f"{key}: {first}\n{key}: {second}\n".encode(), [key], True
    if kind == "text":
        return rest[0].encode("utf-8", "surrogatepass"), [], False
    if kind == "deep":
        return (b"a: " + b"[" * rest[0]), ["a"], False
    return rest[0], [], False


flag_tokens = st.sampled_from(sorted(FLAGS.values()) + [f"--no-{n.replace('_', '-')}" for n in BOOL_FLAGS])
values = st.one_of(
    st.sampled_from(SCALAR_TEXTS),
    st.text(st.characters(exclude_characters="/\\\x00"), max_size=10),
    st.integers().map(str),
    st.floats().map(str),
)
typed_tokens = typed_pairs.map(
    lambda kv: (
        [tc.flag_name(kv[0].replace("-", "_"))] + ([] if isinstance(kv[1], bool) else [str(kv[1])])
        if not isinstance(kv[1], bool) or kv[1]
        else [f"--no-{kv[0].replace('_', '-')}"]
    )
)
tokens = st.one_of(
    flag_tokens,
    flag_tokens,
    values,
    st.tuples(flag_tokens, values).map("=".join),
    flag_tokens.flatmap(lambda f: st.integers(3, max(3, len(f) - 1)).map(lambda n: f[:n])),  # abbreviations
    st.text(st.characters(exclude_characters="/\\\x00"), min_size=1, max_size=8).map(lambda t: "--" + t),
    st.sampled_from(["-h", "--help", "--", "-", "--config", "--resume", "--plan"]),
)
command_lines = st.tuples(
    st.one_of(st.lists(tokens, max_size=8), st.lists(typed_tokens, max_size=4).map(lambda ts: sum(ts, []))),
    st.sampled_from([[], [], ["--teacher", "x/y", "--data", "shards"], ["--data", "toy"]]),
)


def judge_parse(argv: list[str], cwd: Path, names: list[str]) -> str:
    """``parse_args(argv)`` in ``cwd``: accepted, or exit 2 with one ``error:`` line naming one of ``names``."""
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), contextlib.chdir(cwd):
            cfg = tc.parse_args(argv)
    except SystemExit as exc:
        text = err.getvalue()
        assert "Traceback" not in text, text
        if exc.code == 0:  # --help
            assert "usage:" in out.getvalue()
            judge("config and flags", "accepted")
            return "accepted"
        assert exc.code == 2, (exc.code, text)
        assert text.count(": error: ") == 1, text
        message = text.split(": error: ", 1)[1].strip()
        if "unrecognized arguments: " in message:  # argparse names the leftover tokens themselves
            names = names + [tc.shown(t) for t in argv]
        judge("config and flags", "refused", message, names)
        return "refused"
    assert isinstance(cfg, tc.TrainConfig) and not err.getvalue().strip(), err.getvalue()
    judge("config and flags", "accepted")
    return "accepted"


def flag_names(argv: list[str], keys: list[str]) -> list[str]:
    names = [t.split("=", 1)[0] for t in argv if t.startswith("-")] + ["--teacher", "--data"]
    names += [tc.flag_name(str(k).lstrip("-").replace("-", "_").lower()) for k in keys]
    return names + [n.replace("--no-", "--") for n in names]


@fuzz_target()
@given(doc=yaml_documents, line=command_lines)
def test_config_files(scratch, doc, line):
    with example_dir(scratch) as tmp:
        data, keys, duplicate = yaml_bytes(doc)
        (tmp / "run.yaml").write_bytes(data)
        extra, base = line
        argv = [
            *base,
            "--config",
            str(tmp / "run.yaml"),
            *[t for t in extra[:2] if t.split("=")[0] not in ("--config", "-h", "--help")],
        ]
        before = tree_hash(tmp)
        names = [f"--config {tmp / 'run.yaml'}", *flag_names(argv, keys)]
        result = judge_parse(argv, tmp, names)
        if duplicate:
            assert result == "refused", f"a key given twice was taken silently: {data!r}"
        assert tree_hash(tmp) == before, "parsing the configuration wrote or changed a file"


@fuzz_target()
@given(line=command_lines)
def test_command_lines(scratch, line):
    with example_dir(scratch) as tmp:
        (tmp / "prompts.txt").write_bytes(b"a prompt\n")
        extra, base = line
        argv = [*base, *extra]
        before = tree_hash(tmp)
        judge_parse(argv, tmp, flag_names(argv, []))
        assert tree_hash(tmp) == before, "parsing the command line wrote or changed a file"


# --- 5. evaluator inputs -----------------------------------------------------------------------------------------

frame_folders = st.tuples(
    nested_keys,
    st.lists(st.tuples(st.sampled_from([".png", ".jpg", ".PNG", ".webp", ".txt"]), images), min_size=1, max_size=4),
)
eval_files = st.lists(
    st.one_of(
        st.tuples(
            st.tuples(nested_keys, st.sampled_from(list(VIDEO_SUFFIXES) + [".MP4", ".png", ".txt", ""])).map("".join),
            st.tuples(st.just("media"), videos),
        ),
        st.tuples(st.tuples(nested_keys, st.just(".txt")).map("".join), st.tuples(st.just("caption"), caption_files)),
    ),
    max_size=5,
)


def write_frames(root: Path, folders) -> None:
    for name, frames in folders:
        folder = root / name
        if folder.exists() or any(p.is_file() for p in folder.parents if root in p.parents):
            continue
        folder.mkdir(parents=True)
        for i, (suffix, spec) in enumerate(frames):
            (folder / f"{i:03d}{suffix}").write_bytes(image_bytes(spec))


def video_candidates(root: Path) -> list[str]:
    """What ``read_videos`` must read or list: video files and folders with image frames."""
    found = []
    for path in sorted(root.rglob("*")):
        is_video = path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES
        if is_video or (path.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir())):
            found.append(path)
    return [p.relative_to(root).as_posix() for p in found]


@fuzz_target()
@given(
    files=eval_files,
    folders=st.lists(frame_folders, max_size=2),
    data=st.data(),
    min_frames=st.integers(1, 4),
    require_captions=st.booleans(),
    links=symlinks,
)
def test_evaluator_videos(scratch, files, folders, data, min_frames, require_captions, links):
    with example_dir(scratch) as tmp:
        root = tmp / "videos"
        root.mkdir()
        names = write_tree(root, files, video_bytes)
        write_frames(root, folders)
        lines = data.draw(st.one_of(st.none(), jsonl_lines(names + [f[0] for f in folders])), label="captions.jsonl")
        if lines is not None:
            (root / "captions.jsonl").write_bytes(b"\n".join(lines) + b"\n")
        folder_symlinks(root, links, names)
        before, expected, logs = tree_hash(root), video_candidates(root), []
        result, value = outcome(
            lambda: read_videos(root, min_frames, require_captions, logs.append), (DataError, FileNotFoundError)
        )
        judge("evaluator inputs", result, value, [str(root)])
        if result == "accepted":
            clips, texts, skipped = value
            assert len(clips) + len(skipped) == len(expected) and set(skipped) <= set(expected), (expected, skipped)
            for clip, text in zip(clips, texts):
                assert clip.dtype == np.uint8 and clip.ndim == 4 and clip.shape[-1] == 3 and len(clip) >= min_frames
                assert isinstance(text, str) and text.strip() if require_captions else text is None or text.strip()
            for reason in skipped.values():
                assert isinstance(reason, str) and reason.strip()
                judge("evaluator inputs", "skipped", reason)
        assert all("\n" not in line for line in logs), logs
        assert tree_hash(root) == before, "reading the videos changed them"


@fuzz_target()
@given(
    files=st.lists(
        st.tuples(
            st.tuples(nested_keys, st.sampled_from(list(IMAGE_SUFFIXES) + [".PNG", ".gif", ".txt"])).map("".join),
            st.tuples(st.just("media"), images),
        ),
        max_size=5,
    ),
    limit=st.none() | st.integers(0, 3),
    as_folder=st.sampled_from(["", "", "dir.png"]),
)
def test_evaluator_images(scratch, files, limit, as_folder):
    with example_dir(scratch) as tmp:
        root = tmp / "images"
        root.mkdir()
        write_tree(root, files, image_bytes)
        if as_folder:  # a folder named as an image
            (root / as_folder).mkdir(exist_ok=True)
        before, logs = tree_hash(root), []
        paths = [p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES]
        result, value = outcome(lambda: read_images(root, limit, logs.append), (DataError, FileNotFoundError))
        judge("evaluator inputs", result, value, [str(root)])
        if result == "accepted":
            got, skipped = value
            assert got and (limit is None or len(got) <= max(limit, 1)) and len(got) + len(skipped) <= len(paths)
            if limit is None:
                assert len(got) + len(skipped) == len(paths)
            assert all(i.dtype == np.uint8 and i.ndim == 3 and i.shape[-1] == 3 for i in got)
            for reason in skipped.values():
                judge("evaluator inputs", "skipped", reason)
        assert tree_hash(root) == before, "reading the images changed them"


prompt_files = st.one_of(
    st.tuples(st.just("text"), st.lists(captions, max_size=5).map("\n".join), st.sampled_from(ENCODINGS)),
    st.tuples(st.just("bytes"), st.binary(max_size=80)),
    st.sampled_from([("folder",), ("missing",), ("nul",), ("long",)]),
)


@fuzz_target()
@given(spec=prompt_files)
def test_evaluator_prompts(scratch, spec):
    with example_dir(scratch) as tmp:
        path = tmp / "prompts.txt"
        kind, *rest = spec
        if kind == "text":
            path.write_bytes(encode(rest[0], rest[1]))
        elif kind == "bytes":
            path.write_bytes(rest[0])
        elif kind == "folder":
            path.mkdir()
        elif kind == "nul":
            path = tmp / "prompts\x00.txt"
        elif kind == "long":
            path = tmp / ("p" * 300 + ".txt")
        before = tree_hash(tmp)
        result, value = outcome(lambda: read_prompts(path, "--prompts"), (ValueError, FileNotFoundError))
        judge("evaluator inputs", result, value, [f"--prompts {path}"])
        if result == "accepted":
            assert value and all(isinstance(p, str) and p.strip() == p and p and not p.startswith("#") for p in value)
            assert all(len(p.splitlines()) == 1 for p in value), value
        assert tree_hash(tmp) == before


class Plain(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@pytest.fixture(scope="module")
def detector_files(tmp_path_factory) -> list[bytes]:
    """TorchScript files of the right and wrong kinds, and a state dict (a zip that is not TorchScript)."""
    from tests.test_evaluate import TinyI3D, TinyInception

    out = []
    for module in (TinyI3D(), TinyInception(), Plain()):
        buf = io.BytesIO()
        torch.jit.save(torch.jit.script(module), buf)
        out.append(buf.getvalue())
    buf = io.BytesIO()
    torch.save({"weight": torch.zeros(2)}, buf)
    return Blobs([*out, buf.getvalue()])


class Blobs(list):
    """Files' bytes, shown by their sizes in a failure report."""

    def __repr__(self) -> str:
        return f"Blobs(sizes={[len(b) for b in self]})"


def zip_bytes(members) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members:
            z.writestr(name, data)
    return buf.getvalue()


detector_specs = st.one_of(
    st.tuples(st.just("file"), st.integers(0, 3), corruptions),
    st.tuples(
        st.just("zip"),
        st.lists(
            st.tuples(
                st.sampled_from(["archive/data.pkl", "archive/constants.pkl", "archive/code/__torch__.py", "x"]),
                st.binary(max_size=50),
            ),
            max_size=3,
        ),
    ),
    st.tuples(st.just("bytes"), st.binary(max_size=200)),
    st.sampled_from([("folder",), ("missing",)]),
)


@fuzz_target()
@given(spec=detector_specs, name=st.sampled_from([ev.I3D_SOURCE, ev.INCEPTION_SOURCE]), source_index=st.integers(0, 1))
def test_evaluator_detectors(scratch, detector_files, spec, name, source_index):
    with example_dir(scratch) as tmp:
        path = tmp / name[0]
        kind, *rest = spec
        if kind == "file":
            path.write_bytes(corrupt(detector_files[rest[0]], rest[1]))
        elif kind == "zip":
            path.write_bytes(zip_bytes(rest[0]))
        elif kind == "bytes":
            path.write_bytes(rest[0])
        elif kind == "folder":
            path.mkdir()
        source = (ev.I3D_SOURCE, ev.INCEPTION_SOURCE)[source_index]
        before = tree_hash(tmp)
        result, value = outcome(lambda: ev.load_detector(path, source), (ev.DetectorError,))
        judge("evaluator inputs", result, value, [str(path)])
        if result == "accepted":
            assert isinstance(value, ev.Detector)
        assert tree_hash(tmp) == before
