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


def test_part_timer_keeps_the_enclosing_parts_peak_across_a_nested_part(monkeypatch):
    """distill.py nests the adversarial part inside the distillation step; the step's own peak (before
    the nested part reset the counter) must stay the step's."""
    live = {"now": 0, "peak": 0}

    def use(n):
        live["now"] = n
        live["peak"] = max(live["peak"], n)

    monkeypatch.setattr(memory, "peak_memory", lambda: live["peak"])
    monkeypatch.setattr(memory, "reset_peak", lambda: live.update(peak=live["now"]))
    monkeypatch.setattr(memory.torch.cuda, "is_available", lambda: False)
    timer = memory.PartTimer(True)
    with timer("step"):
        use(100)  # the step's forward
        use(10)
        with timer("adversarial"):
            use(40)
        use(20)
    with timer("backward"):
        use(30)
    assert timer.peak_bytes == {"step": 100, "adversarial": 40, "backward": 30}
    assert timer.overall == 100
