"""Opt-in: the shipped workflows in a real ComfyUI server (+ AnimateDiff-Evolved) on the CPU.

Set COMFYUI_DIR to a ComfyUI checkout with ADE in custom_nodes/, COMFYUI_PYTHON to the Python of its environment
(if it is not this one) and COMFYUI_PYTHONPATH to anything its server needs on PYTHONPATH (the host harness's
torchvision shim). The host's model folders must hold MCM_HOST_CHECKPOINT / MCM_HOST_MOTION_MODEL (defaults: the
random-weight files that ../shared/tools/comfyui-host/setup_host.sh writes). One run starts one server
(tests/host/run_workflows.py, about 3 minutes on 2 CPU cores); the tests below read its report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.real_host import ALL_NODES, COMFYUI_DIR, MARKS, ROOT, make_adapters, modelscope_data, skip_without_models

UI_NAMES = sorted(p.stem for p in (ROOT / "workflows").glob("*.json"))
API_NAMES = sorted(p.stem for p in (ROOT / "workflows" / "api").glob("*.json"))

pytestmark = MARKS


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    skip_without_models()
    tmp = tmp_path_factory.mktemp("host-workflows")
    adapters = make_adapters(tmp / "adapters")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # run_workflows.py passes COMFYUI_PYTHONPATH on
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    out = tmp / "report.json"
    script = ROOT / "tests" / "host" / "run_workflows.py"
    proc = subprocess.run(
        [python, str(script), COMFYUI_DIR, str(ROOT), str(adapters), str(out), str(modelscope_data())],
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0 and out.exists(), proc.stderr[-4000:]
    data = json.loads(out.read_text(encoding="utf-8"))
    assert not data["fatal"], f"{data['fatal']}\n--- server log ---\n{data.get('server_log_tail', '')}"
    return data


def test_nodes_register_in_the_server(report):
    assert report["registered"] == ALL_NODES
    assert report["ade_registered"], "AnimateDiff-Evolved did not load (torchvision shim on COMFYUI_PYTHONPATH?)"
    assert "animatediff-webvid" in report["adapter_choices"]


def test_the_server_ran_every_shipped_workflow(report):
    assert sorted(report["runs"]) == API_NAMES == UI_NAMES


@pytest.mark.parametrize("name", UI_NAMES)
def test_ui_workflow_validates_against_object_info(report, name):
    assert report["validation"][name] == []


@pytest.mark.parametrize(
    "case",
    [
        "missing_control_after_generate",
        "combo_value_not_in_list",
        "number_below_min",
        "widgets_out_of_order",
        "unknown_node_type",
        "link_type_mismatch",
        "output_type_changed",
    ],
)
def test_the_validator_catches_broken_workflows(report, case):
    assert report["validator_catches"][case], f"{case}: no problem reported"


def test_validator_accepts_outputs_a_newer_comfyui_appended(report):
    assert report["validator_accepts_appended_output"] == []


def test_template_browser_lists_each_workflow_once(report):
    listing = report["workflow_templates"]
    assert sorted(listing["names"]) == UI_NAMES, listing["names"]  # once each: a second folder would repeat them
    assert all(listing["served_as_shipped"].values()) and sorted(listing["served_as_shipped"]) == UI_NAMES


@pytest.mark.parametrize("name", API_NAMES)
def test_api_workflow_runs_and_saves_every_frame(report, name):
    run = report["runs"][name]
    assert run.get("status") == "success", run
    assert len(run["outputs"]) == 1, run
    (video,) = run["outputs"]
    assert (video["frames"], video["size"]) == (run["expected"]["frames"], run["expected"]["size"]), run
    assert (video["container"], video["codec"], video["pix_fmt"], video["fps"]) == ("mp4", "h264", "yuv420p", 8.0)
    assert not video["constant"], "a constant video: NaN or saturated output"
    assert run["ok"]
    if name == "mcm_long_video_context":
        assert report["sliding_context_used"], "ADE did not sample in context windows"


@pytest.mark.parametrize(
    "case, input_name, error_type",
    [
        ("steps_zero", "steps", "value_smaller_than_min"),
        ("strength_model_too_big", "strength_model", "value_bigger_than_max"),
        ("unknown_adapter", "adapter", "value_not_in_list"),
    ],
)
def test_bad_widget_value_is_rejected_with_400(report, case, input_name, error_type):
    res = report["bad_inputs"][case]
    assert res["http_status"] == 400, res
    assert res["input_name"] == input_name and res["type"] == error_type, res
    assert input_name in res["details"], res
    assert res["alive_after"]


def test_missing_motion_model_fails_with_a_clear_message(report):
    res = report["bad_inputs"]["runtime_no_motion_model"]
    assert res["status"] == "error", res
    (err,) = res["errors"]
    assert err["node_type"] == "MCM_LoraLoader"
    assert "motion" in err["exception_message"] and "strength_motion" in err["exception_message"], err
    assert res["alive_after"]


def test_server_still_serves_after_the_errors(report):
    after = report["after_errors"]
    assert after["status"] == "success" and after["frames"] == after["expected"]["frames"], after
    assert after["queue_empty"]
    assert all(r["alive_after"] for r in report["bad_inputs"].values())
