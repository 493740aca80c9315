"""Opt-in: a short soak of the nodes in a real ComfyUI server (tests/host/soak.py with a CI budget).

Set COMFYUI_DIR (and COMFYUI_PYTHON, COMFYUI_PYTHONPATH) as for the other host tests (tests/README.md). One run
queues 16 prompts of 3 specs (the Gen2 SamplerCustom graph, the MCM KSampler graph and the Gen1 graph; both test
adapters; temporal_norm auto, frames and per_frame) on one server at 64 px and 4 frames, interrupts 2 of them at
a random moment, then runs each spec alone on a fresh server and compares every result bit for bit: four server
starts, about 4-5 minutes on 2 CPU cores. The long run is ``python tests/host/soak.py`` (tests/host/SOAK.md).

Memory: 16 prompts are too few for the server's heap to settle (its resident memory rises for the first 25-30
prompts, then stays within a few percent: tests/host/soak.py), so this run bounds the resident memory's growth
loosely (20 %) and the tensors Python keeps alive tightly (1 %).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.real_host import MARKS, ROOT, make_adapters, skip_without_models

pytestmark = MARKS

PROMPTS, INTERRUPTS, WARMUP, FRAMES, RSS_BOUND = 16, 2, 6, 4, 0.20


@pytest.fixture(scope="module")
def soak(tmp_path_factory):
    skip_without_models()
    tmp = tmp_path_factory.mktemp("soak")
    adapters = make_adapters(tmp / "adapters")
    out = tmp / "soak.json"
    cmd = [
        sys.executable,
        str(ROOT / "tests" / "host" / "soak.py"),
        *("--prompts", str(PROMPTS), "--interrupts", str(INTERRUPTS), "--warmup", str(WARMUP)),
        *("--frames", str(FRAMES), "--rss-bound", str(RSS_BOUND), "--specs", "ci", "--compare", "ci", "--seed", "0"),
        *("--adapters", str(adapters), "--json", str(out), "--no-record"),
    ]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the server gets COMFYUI_PYTHONPATH
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    assert out.exists(), proc.stderr[-4000:]
    data = json.loads(out.read_text(encoding="utf-8"))
    data["returncode"], data["stdout"] = proc.returncode, proc.stdout
    return data


def test_every_prompt_ran_and_the_server_kept_answering(soak):
    assert soak["prompts_run"] == PROMPTS, soak["failures"]
    assert all(r["alive"] for r in soak["records"])
    assert soak["server_running_at_end"] and soak["queue_empty_at_end"]
    bad = [r for r in soak["records"] if r["outcome"] not in ("success", "interrupted")]
    assert not bad, bad


def test_interrupts_stop_prompts_and_the_next_prompt_is_exact(soak):
    assert soak["interrupts_sent"] == INTERRUPTS
    assert soak["interrupted"] >= 1, "no interrupt stopped a prompt"
    after = soak["after_interrupt"]
    assert after["prompts"] == soak["interrupted"]
    assert after["succeeded"] == after["exact"] == after["prompts"], after


def test_every_result_equals_the_spec_run_alone_on_a_fresh_server(soak):
    assert sorted(soak["solo"]) == sorted(s["name"] for s in soak["specs"])
    assert all(s["outcome"] == "success" for s in soak["solo"].values()), soak["solo"]
    completed = [r for r in soak["records"] if r["outcome"] == "success"]
    assert soak["compared_with_solo"] == len(completed) >= PROMPTS - INTERRUPTS
    assert soak["largest_difference"] == 0.0, [r for r in completed if r.get("diff_solo")]


def test_memory_does_not_grow(soak):
    live = soak["live"]
    assert live["warmup"]["tensor_bytes"] > 0
    assert soak["live_tensor_growth"] < 0.01, live
    assert soak["rss_growth"] < RSS_BOUND, soak["rss_kb"]


def test_the_soak_reports_no_failure(soak):
    assert soak["failures"] == [] and soak["returncode"] == 0, soak["stdout"][-3000:]
