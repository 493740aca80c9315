"""training/memory.py: the dry run's per-part timer and the CPU peak-memory reading."""

from __future__ import annotations

import pathlib
import sys

from training import memory


def test_cpu_peak_without_proc_falls_back_to_getrusage(monkeypatch):
    import resource

    real = pathlib.Path.read_text

    def read_text(self, *a, **k):
        if str(self).startswith("/proc/"):
            raise FileNotFoundError(2, "No such file or directory", str(self))  # macOS: no /proc
        return real(self, *a, **k)

    monkeypatch.setattr(pathlib.Path, "read_text", read_text)
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak = memory.cpu_rss_peak()
    assert peak >= maxrss * (1 if sys.platform == "darwin" else 1024) > 0
