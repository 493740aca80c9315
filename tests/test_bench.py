"""Smoke tests of the benchmarks at a tiny size: each prints a finite positive ratio, returns its keys and
appends an entry to the results file it is given (goals are not asserted: timings here are noise)."""

from __future__ import annotations

import json
import math

import pytest

#: The train step that bench_train_step times, and bench_data times beside its decoding, at a tiny size.
TINY_STEP = ["--teacher", "tiny-animatediff", "--resolution", "16", "--frames", "2", "--batch", "1", "--rank", "2"]


def _check(result: dict, keys: set[str], results_file, capsys):
    assert math.isfinite(result["ratio"]) and result["ratio"] > 0
    assert keys <= set(result)
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["ratio"] == pytest.approx(result["ratio"], rel=1e-3)
    entry = results_file.read_text()
    assert (
        entry.startswith("\n## ")
        and "- Machine: " in entry
        and "- Command: `OMP_NUM_THREADS=" in entry
        and '{"ratio": ' in entry
    )


def test_sampler_overhead(tmp_path, capsys):
    from bench.bench_sampler_overhead import main

    out = tmp_path / "RESULTS.md"
    result = main(["--size", "tiny", "--steps", "2", "--reps", "1", "--results", str(out)])
    _check(
        result,
        {"date", "machine", "ratio_sample_mcm", "ratio_from_overhead", "median_cpu_seconds_per_step"},
        out,
        capsys,
    )
    assert set(result["median_cpu_seconds_per_step"]) == {"bare", "sample_consistency", "sample_mcm"}


def test_speedup(tmp_path, capsys):
    from bench.bench_speedup import main, teacher_timesteps

    assert (
        teacher_timesteps()[:3].tolist() == [961, 921, 881] and teacher_timesteps()[-1] == 1
    )  # diffusers DDIM, leading, offset 1
    out = tmp_path / "RESULTS.md"
    result = main(
        ["--size", "tiny", "--frames", "2", "--latent", "4", "--mcm-steps", "1,4", "--reps", "1", "--results", str(out)]
    )
    _check(result, {"speedup_cpu", "limit", "fraction_of_limit_cpu"}, out, capsys)
    assert result["limit"] == {"1-step": 50.0, "4-step": 12.5}


def test_train_step(tmp_path, capsys):
    from bench.bench_train_step import main

    out = tmp_path / "RESULTS.md"
    result = main([*TINY_STEP, "--reps", "1", "--results", str(out)])
    _check(result, {"median_cpu_seconds", "ratio_wall"}, out, capsys)
    assert len(result["median_cpu_seconds"]) == 8  # step, the sum, six passes


def test_data(tmp_path, capsys):
    from bench.bench_data import main

    out = tmp_path / "RESULTS.md"
    result = main(
        [
            "--clips",
            "2",
            "--reps",
            "1",
            *TINY_STEP,
            "--real-clips",
            "1",
            "--real-video-frames",
            "16",
            "--real-interval",
            "1",
            "--real-size",
            "32",
            "--step-seconds",
            "2.0",
            "--results",
            str(out),
        ]
    )
    _check(
        result,
        {"toy_decoded_clips_per_cpu_second", "toy_consumed_clips_per_cpu_second", "real_decoded_clips_per_cpu_second"},
        out,
        capsys,
    )
    assert math.isfinite(result["ratio_real"]) and result["ratio_real"] > 0


def test_host_needs_a_comfyui_dir(monkeypatch):
    from bench.bench_sampler_overhead import main

    monkeypatch.delenv("COMFYUI_DIR", raising=False)
    with pytest.raises(SystemExit, match="COMFYUI_DIR"):
        main(["--host", "--no-record"])


def test_results_name_repository_paths_relative_to_its_root(tmp_path, capsys):
    from types import SimpleNamespace

    from bench.common import ROOT, finish

    out = tmp_path / "RESULTS.md"
    args = SimpleNamespace(device="cpu", no_record=False, results=str(out))
    teacher, outside = ROOT / "training" / "toy" / "teacher", tmp_path / "teacher"
    result = finish(
        args,
        str(ROOT / "bench" / "bench_x.py"),
        ["--teacher", str(teacher)],
        "x",
        {"ratio": 1.0, "teacher": f"{teacher} (rank 8)", "inputs": [str(teacher), str(outside)]},
    )
    assert result["teacher"] == "training/toy/teacher (rank 8)" and result["inputs"] == [
        "training/toy/teacher",
        str(outside),
    ]
    entry = out.read_text()
    assert (
        "python bench/bench_x.py --teacher training/toy/teacher`" in entry
        and '"teacher": "training/toy/teacher (rank 8)"' in entry
    )
    assert str(ROOT) not in entry and str(outside) in entry


def test_live_bytes_hand_count():
    import torch

    from bench.bench_memory_scaling import LiveBytes

    w = torch.randn(64, 32)  # existed before: not counted
    tracker = LiveBytes()
    with tracker:
        a = torch.randn(256)  # 1 KiB
        b = a + 1  # 1 KiB, peak 2 KiB
        b.view(16, 16).add_(1)  # view and in-place: nothing new
        del a, b  # both freed
        c = torch.randn(8, 64) @ w  # 2 KiB input, then 1 KiB output: peak 3 KiB while both live
        assert tracker.now == 1024
    assert tracker.peak == 3 * 1024
    del c
    assert tracker.now == 0


def test_memory_scaling(tmp_path, capsys):
    from bench.bench_memory_scaling import main, predict

    out = tmp_path / "RESULTS.md"
    result = main(
        [
            "--size",
            "tiny",
            "--points",
            "4x2,8x2,4x4,8x4",
            "--levers",
            "fp32,bf16+ckpt",
            "--rank",
            "4",
            "--target",
            "16x4",
            "--vae-points",
            "",
            "--results",
            str(out),
        ]
    )
    assert {"ratio", "levers", "measured", "attention", "target"} <= set(result) and result[
        "ratio"
    ] > 0  # tiny: ratio ~5e-4, below the rounding
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["levers"].keys() == result["levers"].keys()
    assert '{"ratio": ' in out.read_text()
    for lever, summary in result["levers"].items():
        rows = [r for r in result["measured"] if r["lever"] == lever]
        coef4 = summary["four_term_fit"]["coef_bytes"]
        for r in rows[:-1]:  # three points, three terms used: the fit goes through them
            assert predict(coef4, r["latent"], r["frames"]) == pytest.approx(r["step_peak_bytes"], rel=1e-6)
        assert summary["fit_max_rel_error"] < 0.3 and abs(summary["heldout_rel_error"]) < 0.3  # two terms, tiny sizes
        assert summary["target_total_gib"] > summary["weights_gib"] > 0
    assert result["levers"]["bf16+ckpt"]["target_step_gib"] < result["levers"]["fp32"]["target_step_gib"]


def test_memory_levers_run_fp32_unless_the_lever_says_otherwise_and_a_failed_baseline_is_named(monkeypatch):
    import subprocess
    from types import SimpleNamespace

    from bench import bench_memory

    commands, real = [], subprocess.run

    def run(cmd, **kwargs):
        if not any(str(c).endswith("distill.py") for c in cmd):
            return real(cmd, **kwargs)
        commands.append(cmd)
        return SimpleNamespace(returncode=1, stderr="ValueError: boom\n")

    monkeypatch.setattr(subprocess, "run", run)
    with pytest.raises(SystemExit, match="baseline dry run failed: ValueError: boom"):
        bench_memory.main([])
    assert commands
    for cmd in commands:  # distill.py defaults to fp16 on a GPU: the baseline must ask for fp32
        flags = cmd[cmd.index("--dry-run") + 1 :]
        precision = [flags[i + 1] for i, f in enumerate(flags) if f == "--mixed-precision"][-1]
        assert precision == ("bf16" if "bf16" in flags else "no")
