"""A headless CPU ComfyUI server for the host tests: this package linked into a private custom_nodes folder.

`Server(comfy_dir, package_dir, adapter_dir, work, python)` writes an extra-model-paths yaml (the custom_nodes folder
and `mcm: adapter_dir`), starts `main.py --cpu` on a free port with its own input, output and user folders under
`work`, and stops it again; `Client` is a stdlib HTTP client for it. Environment: COMFYUI_PYTHONPATH is prepended to
the server's PYTHONPATH (e.g. the host harness's torchvision shim); OMP_NUM_THREADS is passed on (default 1).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

START_TIMEOUT_S = 180
PROMPT_TIMEOUT_S = 600  # per prompt; a busy 2-core machine can be 4x slower than an idle one
PACK_LINK = "comfyui-mcm"  # the package's folder name in custom_nodes/

# --------------------------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------------------------


class Client:
    def __init__(self, port: int):
        self.base = f"http://127.0.0.1:{port}"
        self.client_id = uuid.uuid4().hex

    def request(self, method: str, path: str, body=None, timeout: float = 60):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.base + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                text = r.read().decode()
                return r.status, json.loads(text) if text else None
        except urllib.error.HTTPError as e:
            text = e.read().decode(errors="replace")
            try:
                return e.code, json.loads(text)
            except ValueError:
                return e.code, text

    def alive(self) -> bool:
        try:
            status, _ = self.request("GET", "/system_stats", timeout=5)
            return status == 200
        except (OSError, urllib.error.URLError):
            return False

    def submit(self, prompt: dict):
        return self.request("POST", "/prompt", {"prompt": prompt, "client_id": self.client_id})

    def wait(self, prompt_id: str, timeout: float = PROMPT_TIMEOUT_S) -> dict | None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            status, hist = self.request("GET", f"/history/{prompt_id}")
            if status == 200 and isinstance(hist, dict) and prompt_id in hist:
                entry = hist[prompt_id]
                if entry.get("status", {}).get("completed") is not None or entry.get("outputs"):
                    return entry
            time.sleep(0.5)
        return None


# --------------------------------------------------------------------------------------------------------------
# Server
# --------------------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(package_dir: Path, python: str = sys.executable) -> tuple[dict, list[str]]:
    """The server's environment: COMFYUI_PYTHONPATH first on PYTHONPATH; the harness shim if torchvision fails."""
    env = dict(os.environ)
    parts = [p for p in (os.environ.get("COMFYUI_PYTHONPATH"), os.environ.get("PYTHONPATH")) if p]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    notes = []
    probe = subprocess.run([python, "-c", "import torchvision"], env=env, capture_output=True)
    if probe.returncode != 0:
        shim = package_dir.resolve().parent / "shared" / "tools" / "comfyui-host" / "shims"
        if shim.is_dir():
            env["PYTHONPATH"] = os.pathsep.join([str(shim), *parts])
            notes.append(f"torchvision not importable: using the host harness shim {shim}")
        else:
            notes.append(
                "torchvision not importable and no shim found: ADE may fail to import (set COMFYUI_PYTHONPATH)"
            )
    if not env["PYTHONPATH"]:
        env.pop("PYTHONPATH")
    # One intra-op thread unless the caller says otherwise: on a small CPU machine shared with other jobs,
    # oversubscribed OpenMP threads made the run 3-4x slower (725 s vs 216 s with 1 thread on 2 busy cores).
    env.setdefault("OMP_NUM_THREADS", "1")
    notes.append(f"server OMP_NUM_THREADS={env['OMP_NUM_THREADS']}")
    return env, notes


class Server:
    def __init__(
        self,
        comfy_dir: Path,
        package_dir: Path,
        adapter_dir: Path,
        work: Path,
        python: str = sys.executable,
        extra_paths: dict[str, list[Path]] | None = None,
    ):
        self.comfy_dir, self.work, self.python = comfy_dir, work, python
        self.output_dir, self.input_dir = work / "output", work / "input"
        for folder in (self.output_dir, self.input_dir, work / "user"):
            folder.mkdir()
        custom = work / "custom_nodes"
        custom.mkdir()
        os.symlink(package_dir.resolve(), custom / PACK_LINK)
        self.yaml = work / "extra_model_paths.yaml"
        folders = {"custom_nodes": [custom], "mcm": [adapter_dir]}
        for name, paths in (extra_paths or {}).items():  # more model folders (e.g. ModelScope's), after these
            folders.setdefault(name, []).extend(paths)
        lines = ["mcm_host_test:"]
        for name, paths in folders.items():
            lines += [f"  {name}: |", *(f"    {Path(p).resolve()}" for p in paths)]
        self.yaml.write_text("\n".join(lines) + "\n")
        self.log_path = work / "server.log"
        self.port = free_port()
        self.env, self.notes = server_env(package_dir, python)
        self.proc = None
        self._log = None

    def start(self) -> float:
        cmd = [
            self.python,
            "main.py",
            "--cpu",
            "--listen",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--disable-auto-launch",
            "--disable-api-nodes",
            "--preview-method",
            "none",
            "--use-pytorch-cross-attention",
            "--output-directory",
            str(self.output_dir),
            "--input-directory",
            str(self.input_dir),
            "--user-directory",
            str(self.work / "user"),
            "--extra-model-paths-config",
            str(self.yaml),
        ]
        self._log = open(self.log_path, "wb")  # noqa: SIM115  (held open while the server runs; stop() closes it)
        t0 = time.time()
        self.proc = subprocess.Popen(cmd, cwd=self.comfy_dir, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        client = Client(self.port)
        while time.time() - t0 < START_TIMEOUT_S:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode} during start-up:\n{self.log_tail()}")
            if client.alive():
                return time.time() - t0
            time.sleep(0.5)
        raise RuntimeError(f"ComfyUI did not answer /system_stats within {START_TIMEOUT_S} s:\n{self.log_tail()}")

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        if self._log:
            self._log.close()
        return self.proc.returncode

    def log_tail(self, chars: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""
