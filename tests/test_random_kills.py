"""The trainer under random faults: a run killed at a random moment resumes to the uninterrupted run's adapter, and
its log never claims a save that did not happen.

Each example starts ``training/distill.py`` as a subprocess (a tiny run: accumulation 2, a checkpoint every 2 steps,
validation every 3), waits for a moment of the run (its first logged step, a checkpoint being written, validation
writing its samples), waits a random few milliseconds more and then sends SIGKILL, SIGINT, or SIGINT twice a
random 5–60 ms apart. Then:

* every ``saved <folder>`` line of the log names a checkpoint that is on disk and verifies; a ``was not saved``
  line names one that is not; no partial ``checkpoint-N`` exists;
* the run, resumed with ``--resume latest`` (or started again where it left no checkpoint), ends with the
  uninterrupted run's adapter.

``MCM_KILL_EXAMPLES`` sets the number of examples (default 4: what CI runs, about 2 minutes).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st

from mcm.weights import load_adapter
from tests.tiny_runs import tiny_run_flags
from training.checkpoints import checkpoints, verify_checkpoint

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
EXAMPLES = int(os.environ.get("MCM_KILL_EXAMPLES", "4"))
STEPS = 6
COMMON = [
    *("--train-batch-size", "1", "--max-train-steps", str(STEPS), "--checkpointing-steps", "2"),
    *("--validation-steps", "3", "--disc-backbone", "tiny", "--disc-frames", "1"),
]
MOMENTS = ("training", "checkpoint write", "validation")
SIGNALS = ("SIGKILL", "SIGINT", "SIGINT twice")


def command(out: Path, data: Path, *extra) -> list[str]:
    return [
        sys.executable,
        "training/distill.py",
        *tiny_run_flags(out, data, *COMMON, *extra, run_name="run", accumulation=2),
    ]


def lora(path: Path) -> dict[str, torch.Tensor]:
    return {k: torch.cat([w.down.flatten(), w.up.flatten()]) for k, w in load_adapter(path).layers.items()}


@pytest.fixture(scope="module")
def reference(toy_data, tmp_path_factory) -> dict[str, torch.Tensor]:
    out = tmp_path_factory.mktemp("reference")
    done = subprocess.run(command(out, toy_data), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return lora(out / "run" / "final" / "adapter.safetensors")


def reached(run: Path, moment: str) -> bool:
    """Whether the run is at ``moment`` now."""
    if moment == "checkpoint write":
        return any(run.glob(".checkpoint-*.tmp"))
    if moment == "validation":
        return any((run / "validation").glob(".step-*")) if (run / "validation").exists() else False
    return (run / "metrics.csv").exists() and len((run / "metrics.csv").read_text().splitlines()) > 1


def interrupt(proc: subprocess.Popen, run: Path, moment: str, delay: float, kind: str, gap: float) -> bool:
    """Wait for ``moment`` (polling every millisecond), then ``delay`` seconds, then send the signal(s).
    Returns whether the signal reached a running process (False: the run ended before the moment came)."""
    deadline = time.time() + 300
    while not reached(run, moment):
        if proc.poll() is not None or time.time() > deadline:
            return False
        time.sleep(0.001)
    time.sleep(delay)
    if proc.poll() is not None:
        return False
    if kind == "SIGKILL":
        proc.send_signal(signal.SIGKILL)
    else:
        proc.send_signal(signal.SIGINT)
        if kind == "SIGINT twice":
            time.sleep(gap)
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
    return True


def check_the_log(log: str, run: Path) -> None:
    """Every save the log claims is on disk and verifies; every save it says was not made is not."""
    for folder in re.findall(r"^saved (\S+):", log, flags=re.M):
        assert Path(folder).is_dir(), f"the log claims {folder}, which is not on disk:\n{log[-2000:]}"
        verify_checkpoint(Path(folder))
    for name in re.findall(r"(checkpoint-\d+) was not saved", log):
        assert not (run / name).exists(), f"the log says {name} was not saved, but it is on disk"
    for line in re.findall(r"continues from (checkpoint-\d+)", log):
        assert (run / line).is_dir(), f"the log sends a resume to {line}, which is not on disk"
    assert "saving a checkpoint" not in log  # the old message, which claimed a save before it happened


@settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True)
@given(
    moment=st.sampled_from(MOMENTS),
    kind=st.sampled_from(SIGNALS),
    delay=st.floats(0.0, 0.25),
    gap=st.floats(0.005, 0.06),
)
def test_a_run_killed_at_a_random_moment_resumes_to_the_uninterrupted_adapter(
    reference, toy_data, tmp_path_factory, moment, kind, delay, gap
):
    out = tmp_path_factory.mktemp("killed")
    run = out / "run"
    cmd = command(out, toy_data)
    with open(out / "log.txt", "w") as sink:  # a file, not a pipe: a full pipe would stall the run
        proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=sink, stderr=subprocess.STDOUT, text=True)
        hit = interrupt(proc, run, moment, delay, kind, gap)
        proc.wait(timeout=600)
    log = (out / "log.txt").read_text()
    assert hit, f"the run ended before {moment} (exit {proc.returncode}): nothing was tested\n{log[-2000:]}"
    assert proc.returncode in (0, -signal.SIGKILL, 130), (proc.returncode, log[-3000:])
    event(f"{kind} at {moment}: exit {proc.returncode}, checkpoints {[p.name for p in checkpoints(run)]}")
    check_the_log(log, run)
    for complete in run.glob("checkpoint-*"):  # never a partial checkpoint-N
        assert (complete / "trainer_state.json").exists() and (complete / "manifest.json").exists(), complete
    if not (run / "final" / "adapter.safetensors").exists():
        if checkpoints(run):
            again = [*cmd, "--resume", "latest"]
        else:  # nothing to resume: the run starts again, in a folder of its own
            again, run = [*cmd, "--run-name", "again"], out / "again"
        done = subprocess.run(again, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    got = lora(run / "final" / "adapter.safetensors")
    assert got.keys() == reference.keys()
    for key in reference:
        assert torch.allclose(got[key], reference[key], rtol=1e-4, atol=1e-6), (moment, kind, key)
