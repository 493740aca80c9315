"""Checkpoints of a distillation run: written atomically, the last K kept, resumed exactly.

``checkpoint-<step>/`` holds everything that changes during training: the adapter (+ PEFT folder,
loadable by the nodes), the motion heads and EMA copies, the optimizers and schedulers (generator
and discriminator), and ``trainer_state.json`` with the step, the micro-batches done, the skip counts,
the data position of every process and the RNG states (``rng_state.pt``). The random draws of a
micro-batch are a function of the seed and the micro-batch's global index (``slot_generator``), so
a resumed run draws what the uninterrupted run would have drawn.

A checkpoint is built in a temporary sibling folder and renamed into place; a failed write (disk
full, …) removes the temporary folder and leaves every earlier checkpoint as it was.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError

from mcm.weights.io import atomic_dir


class CheckpointError(RuntimeError):
    """A checkpoint could not be written (the earlier ones are intact)."""


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


def latest_checkpoint(path: Path) -> Path:
    """``path`` itself when it is a checkpoint, else the run's newest complete checkpoint."""
    if (path / "trainer_state.json").exists():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"--resume {path}: no such run folder")
    found = checkpoints(path)
    if not found:
        raise FileNotFoundError(f"--resume {path}: no checkpoint-N folder with trainer_state.json")
    return found[-1]


def resolve_resume(resume: str, output_dir: str, run_name: str | None) -> Path:
    """``--resume latest`` is the newest checkpoint of ``--output-dir/--run-name`` (or of the newest run
    in ``--output-dir``); anything else is a run or checkpoint folder."""
    if resume != "latest":
        return latest_checkpoint(Path(resume))
    parent = Path(output_dir)
    if run_name:
        return latest_checkpoint(parent / run_name)
    runs = [c.parent for c in parent.glob("*/checkpoint-*") if (c / "trainer_state.json").exists()]
    if not runs:
        raise FileNotFoundError(f"--resume latest: no run with a checkpoint in {parent}")
    newest = max(set(runs), key=lambda r: max(c.stat().st_mtime for c in checkpoints(r)))
    return latest_checkpoint(newest)


def prune(run_dir: Path, keep: int | None, log) -> None:
    """Keep the newest ``keep`` checkpoints (``--checkpoints-total-limit``); None keeps all."""
    if not keep:
        return
    for old in checkpoints(run_dir)[:-keep]:
        (old / "trainer_state.json").unlink(missing_ok=True)  # first: a half-removed folder is not listed as a checkpoint
        shutil.rmtree(old, ignore_errors=True)
        if old.exists():
            log(f"warning: could not remove all of {old.name} (--checkpoints-total-limit {keep}); remove it by hand")
        else:
            log(f"removed {old.name} (--checkpoints-total-limit {keep})")


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}  # fmt: skip


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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
    every process and the trainer state; everything is flushed to the disk before the rename, so a
    crash of the machine cannot leave a ``checkpoint-N`` whose ``trainer_state.json`` is there but
    whose files are not. Raises :class:`CheckpointError` and leaves nothing behind on failure."""
    try:
        with atomic_dir(folder) as tmp:
            write_parts(tmp)
            torch.save(rng_states, tmp / "rng_state.pt")
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2, default=str))
            for path in sorted(tmp.rglob("*"), key=lambda p: len(p.parts), reverse=True) + [tmp]:
                _fsync(path)
        try:
            _fsync(folder.parent)  # the rename itself; the checkpoint is complete whatever this says
        except OSError:
            pass
    except (OSError, RuntimeError, SafetensorError) as exc:  # a full disk: OSError from Python, RuntimeError from torch.save
        raise CheckpointError(f"could not write {folder.name} ({exc})") from exc


def read_state(folder: Path) -> tuple[dict, list | None]:
    state = json.loads((folder / "trainer_state.json").read_text())
    rng_path = folder / "rng_state.pt"
    rngs = torch.load(rng_path, map_location="cpu", weights_only=False) if rng_path.exists() else None  # our own file
    return state, rngs


def check_layout(state: dict, folder: Path, num_processes: int, batch_size: int, accumulation: int, seed: int | None = None) -> None:
    """An exact resume needs the layout and the seed the checkpoint was written with (the seed picks the
    data order and every random draw)."""
    saved_seed = state.get("args", {}).get("seed")
    if seed is not None and saved_seed is not None and saved_seed != seed:
        raise ValueError(f"--resume {folder}: written with --seed {saved_seed}; this run has --seed {seed} (resume with the same seed)")
    saved = (state.get("num_processes", num_processes), state.get("train_batch_size", batch_size),
             state.get("gradient_accumulation_steps", accumulation))  # fmt: skip
    if saved != (num_processes, batch_size, accumulation):
        raise ValueError(f"--resume {folder}: written by {saved[0]} processes × batch {saved[1]} × accumulation {saved[2]}; "
                         f"this run has {num_processes} × {batch_size} × {accumulation} (resume with the same layout)")  # fmt: skip


def truncate_metrics(path: Path, step: int) -> None:
    """Drop the rows logged after ``step`` (a run killed after its last checkpoint logged them) and a
    row cut short by the kill (no line end: the resumed run's first row would be glued to it)."""
    if not path.exists():
        return
    rows = path.read_text().splitlines(keepends=True)
    kept = rows[:1] + [r for r in rows[1:] if r.endswith("\n") and r.split(",", 1)[0].isdigit() and int(r.split(",", 1)[0]) <= step]
    if kept != rows:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(kept))
        tmp.replace(path)
