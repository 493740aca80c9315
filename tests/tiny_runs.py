"""The trainer's flags for a tiny run (CPU, seconds), shared by the trainer tests: the tiny AnimateDiff teacher on
the toy shards (the ``toy_data`` fixture in conftest.py), 16 px, 4 frames, LoRA rank 4, no lr scaling, no warm-up."""

from __future__ import annotations

from pathlib import Path


def tiny_run_flags(
    out_dir: Path | str,
    data: Path | str,
    *extra,
    run_name: str | None = None,
    accumulation: int = 1,
    learning_rate: str | None = "1e-3",
) -> list[str]:
    """``training/distill.py`` flags for a tiny run on ``data`` writing under ``out_dir``; ``extra`` (as strings)
    come last, so they win over the common ones. ``learning_rate=None`` leaves the flag out (the trainer's
    default); ``run_name`` follows ``--output-dir``."""
    named = ["--run-name", run_name] if run_name is not None else []
    rate = ["--learning-rate", learning_rate] if learning_rate is not None else []
    return [
        *("--teacher", "tiny-animatediff", "--data", str(data), "--output-dir", str(out_dir), *named),
        *("--resolution", "16", "--num-frames", "4", "--frame-interval", "1", "--num-workers", "0"),
        *("--lora-rank", "4", "--lora-alpha", "4", "--gradient-accumulation-steps", str(accumulation)),
        *("--no-scale-lr", *rate, "--lr-warmup-steps", "0"),
        *map(str, extra),
    ]
