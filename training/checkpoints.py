"""Checkpoints of a distillation run: written atomically, the last K kept, resumed exactly.

``checkpoint-<step>/`` holds everything that changes during training: the adapter (+ PEFT folder,
loadable by the nodes), the motion heads and EMA copies, the optimizers and schedulers (generator
and discriminator), and ``trainer_state.json`` with the step, the micro-batches done, the skip counts,
the data position of every process and the RNG states (``rng_state.pt``). The random draws of a
micro-batch are a function of the seed and the micro-batch's global index (``slot_generator``), so
a resumed run draws what the uninterrupted run would have drawn.

A checkpoint is built in a temporary sibling folder and renamed into place; a failed write (disk
full, …) removes the temporary folder and leaves every earlier checkpoint as it was. The last file
written is ``manifest.json`` (size and SHA-256 of every other file): :func:`verify_checkpoint` checks it
and parses every file before a run resumes, so a damaged checkpoint is named, file by file, before
anything is moved. Nothing is unpickled beyond tensors and plain values (``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from mcm.weights.atomic import atomic_dir

MANIFEST = "manifest.json"
RNG_FILE = "rng_state.pt"
RNG_FORMAT = "comfyui-mcm rng states 2"  # tensors and plain values only: loads with weights_only=True
REQUIRED = ("trainer_state.json", "optimizer.pt", "peft/adapter_model.safetensors")


class CheckpointError(RuntimeError):
    """A checkpoint could not be written (the earlier ones are intact)."""


class CorruptCheckpoint(ValueError):
    """A checkpoint that cannot be resumed from; the message names the file and what is wrong with it."""


def slot_generator(seed: int, slot: int) -> torch.Generator:
    """The generator of global micro-batch ``slot`` (= micro-batches done × processes + rank).

    One process with gradient accumulation A·P and P processes with accumulation A give every
    micro-batch the same slot, hence the same timesteps, guidance, noise and coin flips.
    """
    return torch.Generator().manual_seed((seed * 1_000_003 + slot * 7919 + 12345) % (2**63 - 1))


def step_of(folder: Path) -> int:
    tail = folder.name.rsplit("-", 1)[-1]
    return int(tail) if folder.name.startswith("checkpoint-") and tail.isdigit() else -1


def checkpoints(run_dir: Path) -> list[Path]:
    """Complete ``checkpoint-N`` folders of a run, oldest first (temporary folders are not listed)."""
    found = [p for p in run_dir.glob("checkpoint-*") if step_of(p) >= 0 and (p / "trainer_state.json").exists()]
    return sorted(found, key=step_of)


def set_aside_newer(checkpoint: Path, log) -> Path | None:
    """Resuming from an older checkpoint of a run abandons the run's newer checkpoints: move them (by
    rename, nothing is deleted) into ``abandoned-after-<step>/``, so that the resumed run writes its own
    ``checkpoint-N`` and ``--resume latest`` cannot pick up the abandoned continuation."""
    step = step_of(checkpoint)
    newer = [p for p in checkpoints(checkpoint.parent) if step_of(p) > step]
    if not newer:
        return None
    base = checkpoint.parent / f"abandoned-after-{step}"
    aside, n = base, 1
    while aside.exists():
        n += 1
        aside = base.with_name(f"{base.name}-{n}")
    aside.mkdir()
    for p in newer:
        p.rename(aside / p.name)
    log(f"resuming from {checkpoint.name}: moved the newer {', '.join(p.name for p in newer)} to {aside.name}/")
    return aside


def is_checkpoint_folder(path: Path) -> bool:
    return step_of(path) >= 0 or (path / "trainer_state.json").exists()


def newest_verified(run: Path, label: str, log) -> Path:
    """The newest checkpoint of ``run`` that :func:`verify_checkpoint` accepts; the newer ones it skips are
    logged with the reason (resuming then sets them aside with :func:`set_aside_newer`)."""
    if not run.is_dir():
        raise FileNotFoundError(f"--resume {label}: no such run folder")
    found = checkpoints(run)
    if not found:
        raise FileNotFoundError(f"--resume {label}: no checkpoint-N folder with trainer_state.json in {run}")
    skipped = []
    for candidate in reversed(found):
        try:
            verify_checkpoint(candidate)
        except CorruptCheckpoint as exc:
            skipped.append(f"{candidate.name} ({exc})")
            continue
        for reason in skipped:
            log(f"--resume {label}: skipped {reason}")
        if skipped:
            log(f"--resume {label}: resuming from {candidate.name}, the newest checkpoint that verifies")
        return candidate
    raise CorruptCheckpoint(f"--resume {label}: no checkpoint of {run} verifies: {'; '.join(skipped)}")


def resolve_resume(resume: str, output_dir: str, run_name: str | None, log=print) -> Path:
    """The verified checkpoint to resume from. ``--resume latest`` is the newest checkpoint that verifies of
    ``--output-dir/--run-name`` (or of the run in ``--output-dir`` with the newest checkpoint), and so is a run
    folder; a named checkpoint folder that does not verify is refused. Nothing is moved here."""
    if resume != "latest":
        path = Path(resume)
        if not is_checkpoint_folder(path):
            return newest_verified(path, resume, log)
        if not path.is_dir():
            raise FileNotFoundError(f"--resume {resume}: no such checkpoint folder")
        try:
            verify_checkpoint(path)
        except CorruptCheckpoint as exc:
            raise CorruptCheckpoint(
                f"--resume {resume}: {exc}; nothing was moved (resume from an earlier checkpoint, "
                f"or --resume latest for the newest one that verifies)"
            ) from None
        return path
    parent = Path(output_dir)
    if run_name:
        return newest_verified(parent / run_name, "latest", log)
    runs = [c.parent for c in parent.glob("*/checkpoint-*") if (c / "trainer_state.json").exists()]
    if not runs:
        raise FileNotFoundError(f"--resume latest: no run with a checkpoint in {parent}")
    newest = max(set(runs), key=lambda r: max(c.stat().st_mtime for c in checkpoints(r)))
    return newest_verified(newest, "latest", log)


def prune(run_dir: Path, keep: int | None, log) -> None:
    """Keep the newest ``keep`` checkpoints (``--checkpoints-total-limit``); None keeps all."""
    if not keep:
        return
    for old in checkpoints(run_dir)[:-keep]:
        (old / "trainer_state.json").unlink(
            missing_ok=True
        )  # first: a half-removed folder is not listed as a checkpoint
        shutil.rmtree(old, ignore_errors=True)
        if old.exists():
            log(f"warning: could not remove all of {old.name} (--checkpoints-total-limit {keep}); remove it by hand")
        else:
            log(f"removed {old.name} (--checkpoints-total-limit {keep})")


def rng_state() -> dict:
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def encode_rng(states: list[dict]) -> dict:
    """The RNG states of every process as tensors and plain values (no numpy arrays, no tuples of objects)."""

    def one(s):
        name, keys, pos, has_gauss, cached = s["numpy"]
        version, internal, gauss_next = s["python"]
        return {
            "torch": s["torch"],
            "cuda": list(s["cuda"]) if s.get("cuda") is not None else None,
            "numpy": {
                "name": str(name),
                "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "cached_gaussian": float(cached),
            },
            "python": {
                "version": int(version),
                "internal": torch.tensor(internal, dtype=torch.int64),
                "gauss_next": gauss_next,
            },
        }

    return {"format": RNG_FORMAT, "processes": [one(s) for s in states]}


def decode_rng(obj) -> list[dict]:
    """The inverse of :func:`encode_rng`; ValueError when ``obj`` is not what it writes."""
    if not isinstance(obj, dict) or obj.get("format") != RNG_FORMAT or not isinstance(obj.get("processes"), list):
        raise ValueError(f"not a {RNG_FORMAT!r} file")
    for p in obj["processes"]:
        torch_state, keys = (p.get("torch"), p.get("numpy", {}).get("keys")) if isinstance(p, dict) else (None, None)
        if not (
            isinstance(torch_state, torch.Tensor)
            and torch_state.dtype == torch.uint8
            and isinstance(keys, torch.Tensor)
        ):
            raise ValueError("an RNG state is not a uint8 torch state with numpy keys")
    try:
        return [
            {
                "torch": p["torch"],
                "cuda": p["cuda"],
                "numpy": (
                    p["numpy"]["name"],
                    p["numpy"]["keys"].numpy().astype(np.uint32),
                    p["numpy"]["pos"],
                    p["numpy"]["has_gauss"],
                    p["numpy"]["cached_gaussian"],
                ),
                "python": (p["python"]["version"], tuple(p["python"]["internal"].tolist()), p["python"]["gauss_next"]),
            }
            for p in obj["processes"]
        ]
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"an RNG state lacks {exc}") from None


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if path.is_dir():  # folders cannot be opened on every system; their files are what matters
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_checkpoint(folder: Path, write_parts, state: dict, rng_states: list) -> None:
    """Build ``folder`` atomically: ``write_parts(tmp)`` writes the model files, then the RNG states of
    every process, the trainer state and, last, the manifest of them all; everything is flushed to the disk
    before the rename, so a crash of the machine cannot leave a ``checkpoint-N`` whose ``trainer_state.json``
    is there but whose files are not. Raises :class:`CheckpointError` and leaves nothing behind on failure."""
    try:
        with atomic_dir(folder) as tmp:
            write_parts(tmp)
            torch.save(encode_rng(rng_states), tmp / RNG_FILE)
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2, default=str))
            write_manifest(tmp)
            for path in sorted(tmp.rglob("*"), key=lambda p: len(p.parts), reverse=True) + [tmp]:
                _fsync(path)
        with contextlib.suppress(OSError):  # the rename itself; the checkpoint is complete whatever this says
            _fsync(folder.parent)
    except (
        OSError,
        RuntimeError,
        SafetensorError,
    ) as exc:  # a full disk: OSError from Python, RuntimeError from torch.save
        raise CheckpointError(f"could not write {folder.name} ({exc})") from exc


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(folder: Path) -> None:
    """``manifest.json``: the size and SHA-256 of every other file of the checkpoint."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    entries = {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)} for p in files}
    (folder / MANIFEST).write_text(json.dumps({"format": 1, "files": entries}, indent=1))


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.split(". ")[0][:160]


def load_pickle_free(path: Path, name: str | None = None):
    """``torch.load`` of a file of tensors and plain values (``weights_only=True``): a pickle of any other
    object (which could run code when loaded) is refused, naming the file."""
    name = name or str(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    if path.name == RNG_FILE and unsafe and all(g.startswith("numpy.") for g in unsafe):
        raise CorruptCheckpoint(
            f"{name} is in the format of earlier versions (numpy arrays in a pickle, which cannot be read "
            f"without letting the file run code); delete it to resume without the saved RNG states (the "
            f"resumed run is then not bit-exact), or resume from a checkpoint written by this version"
        )
    raise CorruptCheckpoint(
        f"{name} holds {', '.join(unsafe[:3]) or 'objects'} besides tensors and plain values "
        f"(a pickle that could run code when loaded); not loaded"
    )


def _check_listed(folder: Path, rel: str, entry) -> None:
    path, name = folder / rel, f"{folder.name}/{rel}"
    if (
        not isinstance(entry, dict)
        or not isinstance(entry.get("size"), int)
        or not isinstance(entry.get("sha256"), str)
    ):
        raise CorruptCheckpoint(f"{folder.name}/{MANIFEST}: the entry of {rel} is not {{'size': int, 'sha256': str}}")
    try:
        if not path.is_file():
            raise CorruptCheckpoint(f"{name} is missing (listed in {MANIFEST})")
        size = path.stat().st_size
        if size != entry["size"]:
            raise CorruptCheckpoint(
                f"{name} is {size} bytes; it was written with {entry['size']} (truncated or changed)"
            )
        if _sha256(path) != entry["sha256"]:
            raise CorruptCheckpoint(f"{name} changed after it was written (its SHA-256 differs from {MANIFEST})")
    except OSError as exc:  # a name too long for the file system, a file that cannot be read
        raise CorruptCheckpoint(f"{name} (listed in {MANIFEST}) cannot be read ({_short(exc)})") from None


def _listed_files(folder: Path) -> list[str]:
    """The files the manifest lists, each checked against its size and hash; without a manifest (a checkpoint
    of an earlier version) every file of the folder."""
    manifest = folder / MANIFEST
    if not manifest.exists():
        return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    try:
        files = json.loads(manifest.read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:  # RecursionError: nested too deep
        raise CorruptCheckpoint(f"{folder.name}/{MANIFEST} does not parse ({_short(exc)})") from None
    if not isinstance(files, dict):
        raise CorruptCheckpoint(f"{folder.name}/{MANIFEST}: 'files' is not an object")
    for rel, entry in files.items():
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise CorruptCheckpoint(f"{folder.name}/{MANIFEST}: {rel!r} is not a path inside the checkpoint")
        _check_listed(folder, rel, entry)
    return sorted(files)


def _parse(path: Path, name: str) -> None:
    if path.suffix == ".json":
        value = json.loads(path.read_text(encoding="utf-8"))
        if path.name == "trainer_state.json" and not (
            isinstance(value, dict) and isinstance(value.get("global_step"), int)
        ):
            raise CorruptCheckpoint(f"{name} is not an object with an integer 'global_step'")
    elif path.suffix == ".safetensors":
        with safe_open(path, "pt"):  # checks the header and that the tensors cover the file exactly
            pass
    elif path.name == RNG_FILE:
        decode_rng(load_pickle_free(path, name))
    elif path.name == "optimizer.pt":
        value = load_pickle_free(path, name)
        if not (
            isinstance(value, dict)
            and isinstance(value.get("optimizer"), dict)
            and isinstance(value.get("scheduler"), dict)
        ):
            raise CorruptCheckpoint(f"{name} is not an object with the 'optimizer' and 'scheduler' states")
    elif path.suffix == ".pt":
        load_pickle_free(path, name)


def verify_checkpoint(folder: Path) -> None:
    """Raise :class:`CorruptCheckpoint` naming the first bad file of ``folder``: a file missing, of another size
    or hash than ``manifest.json`` says, or that does not parse (JSON, safetensors header and coverage, pickle-free
    torch files). Checkpoints of earlier versions (no manifest) are checked by parsing every file."""
    names = _listed_files(folder)
    for rel in REQUIRED:
        if rel not in names or not (folder / rel).is_file():
            raise CorruptCheckpoint(f"{folder.name}/{rel} is missing")
    for rel in names:
        name = f"{folder.name}/{rel}"
        try:
            _parse(folder / rel, name)
        except CorruptCheckpoint:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever a damaged file raises, the file is named
            raise CorruptCheckpoint(f"{name} does not parse ({_short(exc)})") from None


def read_state(folder: Path) -> tuple[dict, list | None]:
    """The trainer state and the RNG states of every process (None for a checkpoint without them)."""
    path = folder / "trainer_state.json"
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise CorruptCheckpoint(f"{path}: {_short(exc)}") from None
    if not (isinstance(state, dict) and isinstance(state.get("global_step"), int)):
        raise CorruptCheckpoint(f"{path} is not an object with an integer 'global_step'")
    rng_path = folder / RNG_FILE
    if not rng_path.exists():
        return state, None
    try:
        return state, decode_rng(load_pickle_free(rng_path))
    except CorruptCheckpoint:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever a damaged file raises (EOFError, RuntimeError, OSError, ...)
        raise CorruptCheckpoint(f"{rng_path}: {_short(exc)}") from None


def check_layout(
    state: dict, folder: Path, num_processes: int, batch_size: int, accumulation: int, seed: int | None = None
) -> None:
    """An exact resume needs the layout and the seed the checkpoint was written with (the seed picks the
    data order and every random draw)."""
    saved_seed = state.get("args", {}).get("seed")
    if seed is not None and saved_seed is not None and saved_seed != seed:
        raise ValueError(
            f"--resume {folder}: written with --seed {saved_seed}; this run has --seed {seed} "
            "(resume with the same seed)"
        )
    saved = (
        state.get("num_processes", num_processes),
        state.get("train_batch_size", batch_size),
        state.get("gradient_accumulation_steps", accumulation),
    )
    if saved != (num_processes, batch_size, accumulation):
        raise ValueError(
            f"--resume {folder}: written by {saved[0]} processes × batch {saved[1]} × accumulation {saved[2]}; "
            f"this run has {num_processes} × {batch_size} × {accumulation} (resume with the same layout)"
        )
