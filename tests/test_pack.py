"""What the registry pack (`comfy node pack` / `comfy node publish`) holds: the nodes, mcm/, the workflows, the
nodes' help pages (web/, the package's WEB_DIRECTORY) and the package metadata; not the tests, benchmarks, CI or
the trainer with its toy teacher.

comfy-cli (1.23) zips the git-tracked files whose path does not match a `.comfyignore` pattern (gitwildmatch,
via the `pathspec` library; blank and `#` lines skipped), plus every file under the `[tool.comfy] includes`
folders, which .comfyignore does not filter. `pack_files` below applies that rule; with comfy-cli installed
(MCM_COMFY_CLI = its `comfy` executable; `.ci/run` installs it into its own venv) the tests also compare with
comfy-cli's own zip function and run `comfy node validate`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMFY_CLI = os.environ.get("MCM_COMFY_CLI") or shutil.which("comfy")
#: Patterns the fallback matcher below understands exactly as gitwildmatch does: an anchored path, `/` at the end
#: for a folder (no wildcards).
SIMPLE_PATTERN = re.compile(r"^/[\w.\-/]+$")


def _git_tracked() -> list[str]:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the pack is built from git-tracked files")
    out = subprocess.run(["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if line.strip()]


def _ignore_patterns() -> list[str]:
    lines = (ROOT / ".comfyignore").read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def _includes() -> list[str]:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return list(data["tool"]["comfy"].get("includes", []))


def _matcher(patterns: list[str]):
    try:
        import pathspec
    except ImportError:  # the subset in SIMPLE_PATTERN: an anchored file or folder
        assert all(SIMPLE_PATTERN.match(p) for p in patterns), f"not a plain anchored path: {patterns}"

        def match(path: str) -> bool:
            return any(path == p.strip("/") or path.startswith(p.strip("/") + "/") for p in patterns)

        return match
    return pathspec.PathSpec.from_lines("gitwildmatch", patterns).match_file


def pack_files() -> list[str]:
    ignored, includes = _matcher(_ignore_patterns()), [i.strip("/") for i in _includes()]
    forced = [f for inc in includes for f in (str(p.relative_to(ROOT)) for p in (ROOT / inc).rglob("*") if p.is_file())]
    kept = [f for f in _git_tracked() if any(f.startswith(inc + "/") for inc in includes) or not ignored(f)]
    return sorted(set(kept) | set(forced))


def test_pack_holds_what_comfyui_loads():
    files = set(pack_files())
    tracked = _git_tracked()
    needed = {"__init__.py", "pyproject.toml", "requirements.txt", "README.md", "LICENSE"}
    needed |= {f for f in tracked if f.startswith(("nodes/", "mcm/")) and f.endswith(".py")}
    needed |= {f for f in tracked if re.fullmatch(r"workflows/(api/)?[\w.-]+\.json", f)}
    needed |= {f for f in tracked if f.startswith("web/")}
    assert any(f.startswith("nodes/") for f in needed) and any(f.startswith("workflows/api/") for f in needed)
    assert not needed - files, f"missing from the pack: {sorted(needed - files)}"


def test_no_ignore_pattern_drops_the_help_pages():
    """The help pages the frontend fetches (web/docs/, on disk whether or not git tracks them yet) are never
    matched by .comfyignore, so every committed one is packed (test_pack_holds_what_comfyui_loads)."""
    ignored = _matcher(_ignore_patterns())
    pages = [p.relative_to(ROOT).as_posix() for p in (ROOT / "web" / "docs").glob("*.md")]
    assert len(pages) >= 6 and not [f for f in pages if ignored(f)]


def test_pack_leaves_out_tests_bench_ci_and_the_trainer():
    files = pack_files()
    dev = [f for f in files if f.split("/")[0] in ("tests", "bench", ".ci", "training", "runs", "outputs")]
    assert not dev, f"development files in the pack: {dev[:10]}"
    assert not [f for f in files if "__pycache__" in f or f.endswith((".pyc", ".safetensors", ".pt", ".ckpt"))]
    # the templates grow with their number (a UI and an API file and the template browser's thumbnail each): they
    # have a budget per template; everything else one budget
    templates = {f.rsplit("/", 1)[-1].rsplit(".", 1)[0] for f in files if f.startswith("workflows/")}
    per_template = {
        name: sum((ROOT / f).stat().st_size for f in files if f.startswith("workflows/") and f"/{name}." in f)
        for name in templates
        if (ROOT / "workflows" / f"{name}.json").exists()
    }
    assert per_template and max(per_template.values()) < 100_000, per_template
    rest = sum((ROOT / f).stat().st_size for f in files if not f.startswith("workflows/"))
    assert rest < 1_000_000, f"the pack is {rest} bytes besides the templates"


def test_only_one_template_folder_is_packed():
    top = {f.split("/")[0] for f in pack_files()}
    assert top & {"example_workflows", "example", "examples", "workflow", "workflows"} == {"workflows"}


@pytest.mark.skipif(not COMFY_CLI, reason="comfy-cli not installed (set MCM_COMFY_CLI to its `comfy` executable)")
def test_comfy_clis_own_zip_equals_the_rule(tmp_path):
    python = Path(COMFY_CLI).resolve().parent / "python"
    out = tmp_path / "node.zip"
    code = (
        "import os, sys; os.chdir(sys.argv[1]); from comfy_cli.file_utils import zip_files; "
        "zip_files(sys.argv[2], includes=sys.argv[3:])"
    )
    proc = subprocess.run(
        [str(python), "-c", code, str(ROOT), str(out), *_includes()], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    with zipfile.ZipFile(out) as zf:
        assert sorted(n for n in zf.namelist() if not n.endswith("/")) == pack_files()


@pytest.mark.skipif(not COMFY_CLI, reason="comfy-cli not installed (set MCM_COMFY_CLI to its `comfy` executable)")
def test_comfy_node_validate_passes(tmp_path):
    env = {**os.environ, "HOME": str(tmp_path)}  # comfy-cli writes its settings under HOME
    proc = subprocess.run(
        [COMFY_CLI, "--skip-prompt", "--no-enable-telemetry", "node", "validate"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "All validation checks passed" in out, out[-3000:]
    assert "Traceback" not in out and "Security warnings" not in out, out[-3000:]
