"""The package as users meet it: the ComfyUI entry point, the nodes' declarations, README, CI."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mcm.sampler import comfy_sigmas
from mcm.schedule import NoiseSchedule, lcm_timesteps
from tests.real_host import ALL_NODES

ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, *args, "-c", code] if code else [sys.executable, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_entry_point_imports_without_comfyui_and_registers_the_nodes_the_v3_way():
    code = f"""
import asyncio, importlib.util, inspect, json, sys
spec = importlib.util.spec_from_file_location("probe_pkg", {str(ROOT / "__init__.py")!r},
                                              submodule_search_locations=[{str(ROOT)!r}])
m = importlib.util.module_from_spec(spec); sys.modules["probe_pkg"] = m; spec.loader.exec_module(m)
heavy = [n for n in ("comfy", "comfy_api", "folder_paths", "diffusers", "transformers", "peft") if n in sys.modules]
v1 = hasattr(m, "NODE_CLASS_MAPPINGS")  # ComfyUI's loader would take the V1 path and never call the entry point
from tests.comfy_api_stub import install
install()
extension = asyncio.run(m.comfy_entrypoint())
schemas = [cls.define_schema() for cls in asyncio.run(extension.get_node_list())]
print(json.dumps({{"ids": sorted(s.node_id for s in schemas), "names": {{s.node_id: s.display_name for s in schemas}},
                  "heavy": heavy, "v1": v1, "async": inspect.iscoroutinefunction(m.comfy_entrypoint),
                  "listed": m.NODE_IDS, "after": [n for n in ("comfy", "folder_paths") if n in sys.modules]}}))
"""
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["ids"] == ALL_NODES and sorted(out["listed"]) == ALL_NODES
    assert all(out["names"].values())
    assert out["heavy"] == [] and out["after"] == []
    assert out["v1"] is False and out["async"] is True


def test_core_imports_without_comfyui_or_diffusers():
    proc = run_python(
        "import sys, mcm, mcm.weights; print([n for n in ('comfy', 'diffusers', 'nodes') if n in sys.modules])"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_beta_choices_cover_both_schedules_and_name_both_conventions(package):
    from mcm.schedule import COMFY_BETA_NAMES

    choices = importlib.import_module(f"{package.__name__}.nodes.choices").BETA_CHOICES
    assert set(choices.values()) == set(COMFY_BETA_NAMES)
    for label, diffusers_name in choices.items():
        assert label.startswith(COMFY_BETA_NAMES[diffusers_name] + " ") and f"diffusers {diffusers_name}" in label


def test_the_fallback_schedule_is_the_official_demos_by_name_not_by_dictionary_order(package):
    choices = importlib.import_module(f"{package.__name__}.nodes.choices")
    assert choices.DEMO_BETA_SCHEDULE == "linear"  # diffusers linear = ComfyUI sqrt_linear, the official demo's
    assert choices.BETA_CHOICES[choices.DEMO_BETA_LABEL] == "linear" and choices.DEMO_BETA_LABEL.startswith(
        "sqrt_linear"
    )


class _FakeModelSampling:
    def __init__(self, schedule):
        self.schedule = schedule

    def sigma(self, t):
        return self.schedule.sigma_at(t).float()


class _FakeModel:
    def __init__(self, schedule):
        self.ms = _FakeModelSampling(schedule)

    def get_model_object(self, name):
        assert name == "model_sampling"
        return self.ms


@pytest.mark.parametrize("steps, denoise", [(1, 1.0), (4, 1.0), (8, 1.0), (4, 0.6)])
def test_scheduler_node_gives_the_grid_sigmas(mcm_nodes, steps, denoise):
    schedule = NoiseSchedule("linear")
    (sigmas,) = mcm_nodes["MCM_Scheduler"].execute(_FakeModel(schedule), steps, denoise).args
    expected = comfy_sigmas(lcm_timesteps(steps, strength=denoise), schedule)
    assert sigmas.dtype == torch.float32 and torch.allclose(sigmas, expected, rtol=1e-6, atol=0)


def test_scheduler_node_explains_an_impossible_denoise(mcm_nodes):
    with pytest.raises(ValueError, match="keeps only 5 of the 50"):
        mcm_nodes["MCM_Scheduler"].execute(_FakeModel(NoiseSchedule()), 8, 0.1)


def test_distill_default_runs_end_to_end(tmp_path):
    plan = run_python("", "training/distill.py", "--plan")
    assert plan.returncode == 0 and "999, 759, 499, 259" in plan.stdout
    assert "frame discriminator: DINOv2 tiny" in plan.stdout  # the toy default runs the whole method
    env_code = (
        "import os, runpy, sys; os.environ['MCM_TOY_DATA'] = sys.argv[1]; "
        "sys.argv = ['distill.py', '--output-dir', sys.argv[2], '--max-train-steps', '2', "
        "'--eval-prompts', '2', '--eval-seeds', '1', '--eval-teacher-steps', '4']; "
        "runpy.run_path('training/distill.py', run_name='__main__')"
    )
    run = subprocess.run(
        [sys.executable, "-c", env_code, str(tmp_path / "toy"), str(tmp_path / "runs")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["skipped_samples"] == 0
    assert (run_dir / "adapter.safetensors").exists()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"MCM 1-step", "MCM 4-step", "data: clean frames"} <= set(metrics["metrics"])
    assert any(name.startswith("teacher 4-step") for name in metrics["metrics"])
    (pair,) = [v for k, v in metrics["paired"].items() if k.startswith("MCM 4-step vs teacher 4-step")]
    assert set(pair) == {"correct", "coherent", "visible"} and metrics["clips"] == 2
    assert (run_dir / "preview" / "preview.gif").stat().st_size > 0 and (
        run_dir / "preview" / "preview.png"
    ).stat().st_size > 0


def _third_party_imports(folder: Path) -> dict[str, list[str]]:
    """``{top-level package: [file:line, ...]}`` of every absolute import under ``folder`` (functions included)."""
    import ast

    found: dict[str, list[str]] = {}
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            for name in names:
                found.setdefault(name.split(".")[0], []).append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_the_node_pack_imports_only_its_declared_dependencies():
    """What the registry records and ComfyUI-Manager installs is what the nodes and the core import: torch and
    safetensors (ComfyUI's own modules aside); tqdm and transformers only in the files that use them when
    present (a progress bar; the trainer's discriminator backbone)."""
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    host = {"comfy", "comfy_api", "comfy_extras", "folder_paths", "latent_preview", "nodes", "server"}
    declared = {"torch", "safetensors"}
    optional = {"tqdm": {"mcm/sampler.py"}, "transformers": {"mcm/discriminator.py"}}
    imports = _third_party_imports(ROOT / "mcm")
    for name, where in _third_party_imports(ROOT / "nodes").items():
        imports.setdefault(name, []).extend(where)
    assert imports["torch"] and imports["safetensors"]  # the reader sees the imports
    undeclared = {
        name: where
        for name, where in imports.items()
        if name not in stdlib | host | declared | {"mcm"}
        and not {w.split(":")[0] for w in where} <= optional.get(name, set())
    }
    assert undeclared == {}
    reqs = {line.split("#")[0].split(">")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()}
    assert reqs - {""} == declared - {"torch"}


def test_readme_ci_and_requirements_agree():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    commands = [line for line in readme.splitlines() if line.startswith("python3 -m venv")]
    assert len(commands) == 2, commands
    assert commands[0].endswith("python training/distill.py")
    test_command = commands[1].rsplit("&& ", 1)[1]
    assert test_command == "python -m pytest" and f"\n{test_command}\n" in ci
    assert "pip install --quiet torch==2.13.0" in ci and ".[train,dev]" in ci and ".[train,dev]" in commands[1]
    reqs = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    assert not any(r.split(">")[0].split("=")[0].strip().lower() == "torch" for r in reqs if r)


def test_pyproject_bounds_torch_from_below_only_and_has_the_registry_table():
    tomllib = pytest.importorskip("tomllib")
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    deps = meta["project"]["dependencies"]
    torch_dep = [d for d in deps if d.startswith("torch")]
    assert torch_dep == ["torch>=2.1"]
    # one declaration: what the nodes need is [project].dependencies and requirements.txt alike (torch aside);
    # the trainer's libraries are the `train` extra, so installing the node pack pulls no diffusers or transformers
    reqs = {line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()} - {""}
    assert set(deps) - {"torch>=2.1"} == reqs
    train = meta["project"]["optional-dependencies"]["train"]
    for name in ("diffusers", "peft", "transformers", "accelerate"):
        assert any(d.startswith(name + ">=") for d in train) and not any(d.startswith(name) for d in deps), name
    assert meta["tool"]["comfy"]["PublisherId"] and meta["tool"]["comfy"]["DisplayName"]
    packages = meta["tool"]["setuptools"]["packages"]
    assert all(p == "mcm" or p.startswith("mcm.") for p in packages)  # never install a top-level `nodes`
    on_disk = {
        str(d.relative_to(ROOT)).replace("/", ".") for d in (ROOT / "mcm").rglob("*") if (d / "__init__.py").exists()
    }
    assert on_disk | {"mcm"} == set(packages), "every mcm subpackage must be installed"
