"""Resuming from a checkpoint that is damaged or crafted (CPU, tiny teacher): nothing read from a checkpoint runs
code, a bad file is named before anything of the run is moved, and ``--resume latest`` falls back to the newest
checkpoint that verifies and says so."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from training import checkpoints, distill
from training.toy.world import write_toy_shards

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from test_faults import ENV, flags, one_thread  # noqa: E402, F401  (one_thread: an autouse fixture)

FILES = [
    "optimizer.pt",
    "peft/adapter_model.safetensors",
    "trainer_state.json",
    "rng_state.pt",
    "trainable_extra.safetensors",
]
LAYOUT = ["--train-batch-size", "1", "--disc-frames", "1", "--max-train-steps", "3", "--checkpointing-steps", "1"]


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """A 3-step run with checkpoint-1, -2 and -3 (adapter, PEFT folder, motion heads, discriminator, RNG states)."""
    root = tmp_path_factory.mktemp("trust")
    data = write_toy_shards(root / "toy", num_clips=8, per_shard=4, frames=8, size=16)
    run = distill.train(distill.parse_args(flags(root / "out", data, *LAYOUT, "--run-name", "run")))
    return run, data


@pytest.fixture
def run(toy_run, tmp_path):
    """A fresh copy of the toy run for one test to damage."""
    return Path(shutil.copytree(toy_run[0], tmp_path / "out" / "run"))


def tree(folder: Path) -> dict[str, str]:
    """Every file and folder under ``folder`` with the SHA-256 of its bytes: equal before and after = nothing moved."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(folder.rglob("*"))
    }


def resume(run: Path, data: Path, target: str, capsys, *extra) -> tuple[int, str]:
    code = distill.main(flags(run.parent, data, *LAYOUT, "--run-name", run.name, "--resume", target, *extra))
    out = capsys.readouterr()
    return code, out.out + out.err


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


class WritesMarker:
    """Unpickling this object runs code: it creates the file ``marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


# --- damaged files --------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_manifest", [True, False], ids=["manifest", "earlier-version"])
@pytest.mark.parametrize("name", FILES)
def test_a_named_checkpoint_with_a_truncated_file_is_refused_naming_it_and_nothing_moves(
    run, toy_run, capsys, name, with_manifest
):
    ckpt = run / "checkpoint-2"
    if not with_manifest:  # a checkpoint of the previous version: verified by parsing each file
        (ckpt / checkpoints.MANIFEST).unlink()
    truncate(ckpt / name)
    before = tree(run)
    code, out = resume(run, toy_run[1], str(ckpt), capsys)
    assert code == 2 and "Traceback" not in out
    assert f"error: --resume {ckpt}: checkpoint-2/{name} " in out and "nothing was moved" in out
    assert tree(run) == before  # checkpoint-3 is where it was; no abandoned-after-2/


def test_resume_latest_skips_a_corrupt_newest_checkpoint_says_so_and_sets_it_aside(run, toy_run, capsys):
    truncate(run / "checkpoint-3" / "optimizer.pt")
    damaged = (run / "checkpoint-3" / "optimizer.pt").read_bytes()
    code, out = resume(run, toy_run[1], "latest", capsys)
    assert code == 0 and "Traceback" not in out
    assert "--resume latest: skipped checkpoint-3 (checkpoint-3/optimizer.pt is " in out
    assert "--resume latest: resuming from checkpoint-2, the newest checkpoint that verifies" in out
    assert f"resumed from {run / 'checkpoint-2'} at step 2" in out
    assert (run / "abandoned-after-2" / "checkpoint-3" / "optimizer.pt").read_bytes() == damaged  # kept, not deleted
    checkpoints.verify_checkpoint(run / "checkpoint-3")  # the resumed run's own checkpoint-3
    assert json.loads((run / "checkpoint-3" / "trainer_state.json").read_text())["global_step"] == 3


def test_resume_latest_with_no_checkpoint_that_verifies_names_each_and_moves_nothing(run, toy_run, capsys):
    for step in (1, 2, 3):
        truncate(run / f"checkpoint-{step}" / "trainer_state.json")
    before = tree(run)
    code, out = resume(run, toy_run[1], "latest", capsys)
    assert code == 2 and "Traceback" not in out
    assert all(f"checkpoint-{s}/trainer_state.json" in out for s in (1, 2, 3))
    assert tree(run) == before


def test_a_well_formed_file_of_the_wrong_content_is_named(run):
    torch.save([torch.zeros(3)], run / "checkpoint-2" / "optimizer.pt")  # tensors only, but not an optimizer state
    checkpoints.write_manifest(run / "checkpoint-2")
    with pytest.raises(
        checkpoints.CorruptCheckpoint, match="checkpoint-2/optimizer.pt is not an object with the 'optimizer'"
    ):
        checkpoints.verify_checkpoint(run / "checkpoint-2")
    (run / "checkpoint-3" / "trainer_state.json").write_text("[]")
    checkpoints.write_manifest(run / "checkpoint-3")
    with pytest.raises(
        checkpoints.CorruptCheckpoint, match="checkpoint-3/trainer_state.json is not an object with an integer"
    ):
        checkpoints.verify_checkpoint(run / "checkpoint-3")
    (run / "checkpoint-1" / checkpoints.MANIFEST).write_text(
        json.dumps({"files": {"../../secret": {"size": 1, "sha256": ""}}})
    )
    with pytest.raises(checkpoints.CorruptCheckpoint, match="'../../secret' is not a path inside the checkpoint"):
        checkpoints.verify_checkpoint(run / "checkpoint-1")


def test_a_checkpoint_of_another_configuration_is_refused_before_anything_moves(run, toy_run, capsys):
    before = tree(run)
    code, out = resume(run, toy_run[1], str(run / "checkpoint-2"), capsys, "--lora-rank", "8")
    assert code == 2 and "Traceback" not in out
    assert f"--resume {run / 'checkpoint-2'}: this run changes" in out and "--lora-rank" in out  # the config check
    assert tree(run) == before


@pytest.mark.parametrize(
    "damage, says",
    [
        ("a folder", "checkpoint-3/manifest.json does not parse ([Errno 21] Is a directory"),
        ("nested", "checkpoint-3/manifest.json does not parse (maximum recursion depth exceeded"),
        ("a long name", f"checkpoint-3/{'a' * 300} (listed in manifest.json) cannot be read ([Errno 36] File name too"),
    ],
)
def test_a_manifest_that_is_a_folder_nests_too_deep_or_lists_an_impossible_name_is_named(run, damage, says):
    """Found by the fuzz campaign (tests/fuzz/test_fuzz_training.py): each raised an OSError or RecursionError, which
    ``--resume latest`` did not skip and the trainer printed as a traceback."""
    ckpt, manifest = run / "checkpoint-3", run / "checkpoint-3" / checkpoints.MANIFEST
    if damage == "a folder":
        manifest.unlink()
        manifest.mkdir()
    elif damage == "nested":
        manifest.write_text("[" * 100_000)
    else:
        entries = json.loads(manifest.read_text())
        entries["files"]["a" * 300] = {"size": 1, "sha256": ""}
        manifest.write_text(json.dumps(entries))
    before, logs = tree(run), []
    with pytest.raises(checkpoints.CorruptCheckpoint) as exc:
        checkpoints.verify_checkpoint(ckpt)
    assert str(exc.value).startswith(says), exc.value
    with pytest.raises(checkpoints.CorruptCheckpoint, match=rf"^--resume {ckpt}: checkpoint-3/"):
        checkpoints.resolve_resume(str(ckpt), str(run.parent), None, logs.append)
    assert checkpoints.resolve_resume("latest", str(run.parent), run.name, logs.append) == run / "checkpoint-2"
    assert logs[0].startswith(f"--resume latest: skipped checkpoint-3 ({says}")
    assert tree(run) == before


@pytest.mark.parametrize(
    "name, damage, says",
    [
        ("rng_state.pt", b"", "rng_state.pt: EOFError"),
        ("rng_state.pt", b"PK\x03\x04" + bytes(60), "rng_state.pt: PytorchStreamReader failed reading zip archive"),
        ("rng_state.pt", "a folder", "rng_state.pt: [Errno 21] Is a directory"),
        ("trainer_state.json", b"null", "trainer_state.json is not an object with an integer 'global_step'"),
        ("trainer_state.json", b"[" * 100_000, "trainer_state.json: maximum recursion depth exceeded"),
    ],
)
def test_read_state_names_a_damaged_file_whatever_reading_it_raises(run, name, damage, says):
    """Found by the fuzz campaign: ``read_state`` (which reads ``trainer_state.json`` and ``rng_state.pt`` again after
    the checkpoint verified) let EOFError, RuntimeError and OSError through, and returned a state that is not one."""
    ckpt = run / "checkpoint-2"
    (ckpt / name).unlink()
    if damage == "a folder":
        (ckpt / name).mkdir()
    else:
        (ckpt / name).write_bytes(damage)
    with pytest.raises(checkpoints.CorruptCheckpoint) as exc:
        checkpoints.read_state(ckpt)
    assert str(exc.value).startswith(f"{ckpt / name}") and says in str(exc.value), exc.value
    assert "\n" not in str(exc.value)


# --- crafted pickles ------------------------------------------------------------------------------------


def test_the_crafted_state_file_would_run_code_when_unpickled(tmp_path):
    """The payload of the tests below works: a plain ``torch.load`` creates the marker."""
    marker = tmp_path / "marker"
    torch.save({"torch": WritesMarker(marker)}, tmp_path / "state.pt")
    torch.load(tmp_path / "state.pt", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("manifest", ["rewritten", "removed"])
@pytest.mark.parametrize("name", ["rng_state.pt", "optimizer.pt"])
def test_a_crafted_pickle_in_a_checkpoint_is_refused_and_runs_no_code(run, toy_run, capsys, tmp_path, name, manifest):
    ckpt, marker = run / "checkpoint-2", tmp_path / "marker"
    torch.save({"format": checkpoints.RNG_FORMAT, "processes": [{"torch": WritesMarker(marker)}]}, ckpt / name)
    if manifest == "rewritten":  # whoever crafted the file also made the manifest match it
        checkpoints.write_manifest(ckpt)
    else:
        (ckpt / checkpoints.MANIFEST).unlink()
    before = tree(run)
    code, out = resume(run, toy_run[1], str(ckpt), capsys)
    assert not marker.exists()
    assert code == 2 and "Traceback" not in out
    assert f"checkpoint-2/{name} holds builtins.exec besides tensors and plain values" in out
    assert tree(run) == before


def test_the_cli_on_resume_latest_skips_a_crafted_rng_state_and_runs_no_code(run, toy_run, tmp_path):
    ckpt, marker = run / "checkpoint-3", tmp_path / "marker"
    torch.save([{"torch": WritesMarker(marker)}], ckpt / "rng_state.pt")
    crafted = (ckpt / "rng_state.pt").read_bytes()
    (ckpt / checkpoints.MANIFEST).unlink()
    argv = flags(run.parent, toy_run[1], *LAYOUT, "--run-name", run.name, "--resume", "latest")
    proc = subprocess.run(
        [sys.executable, "training/distill.py", *argv], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300
    )
    assert not marker.exists()
    assert proc.returncode == 0, proc.stderr[-3000:]  # latest falls back to checkpoint-2
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "skipped checkpoint-3 (checkpoint-3/rng_state.pt holds builtins.exec" in proc.stdout
    assert (
        run / "abandoned-after-2" / "checkpoint-3" / "rng_state.pt"
    ).read_bytes() == crafted  # set aside, not deleted


# --- RNG states -----------------------------------------------------------------------------------------


def test_rng_states_round_trip_through_a_pickle_free_file(tmp_path):
    random.seed(5), np.random.seed(6), torch.manual_seed(7)
    saved = checkpoints.rng_state()
    torch.save(checkpoints.encode_rng([saved, saved]), tmp_path / "rng_state.pt")
    want = (random.random(), np.random.rand(), torch.rand(1).item())
    loaded = checkpoints.decode_rng(torch.load(tmp_path / "rng_state.pt", weights_only=True))
    assert len(loaded) == 2
    checkpoints.set_rng_state(loaded[1])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == want


def test_an_rng_state_of_the_earlier_format_is_refused_with_what_to_do(run, toy_run, capsys):
    ckpt = run / "checkpoint-2"
    (ckpt / checkpoints.MANIFEST).unlink()  # as the previous version wrote it: a pickle with numpy arrays, no manifest
    torch.save([checkpoints.rng_state()], ckpt / "rng_state.pt")
    before = tree(run)
    code, out = resume(run, toy_run[1], str(ckpt), capsys)
    assert code == 2 and "Traceback" not in out and tree(run) == before
    assert "checkpoint-2/rng_state.pt is in the format of earlier versions" in out and "delete it to resume" in out
    (ckpt / "rng_state.pt").unlink()
    code, out = resume(run, toy_run[1], str(ckpt), capsys)
    assert code == 0 and f"resumed from {ckpt} at step 2" in out
