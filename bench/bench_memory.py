"""Benchmark: peak memory and time of one training step per memory lever of ``training/distill.py``.

    OMP_NUM_THREADS=1 python bench/bench_memory.py [--teacher tiny-animatediff] [--resolution 64] [--frames 8]

Each configuration is one ``distill.py --dry-run`` in a fresh process (so peaks do not leak between
them); the dry run reports seconds and peak memory per part of the step (CUDA: allocator peak; CPU:
the process's peak resident set, reset per part through ``/proc/self/clear_refs``). Prints one line per
lever with the ratio to the baseline (all levers off) and a JSON line for ``bench/RESULTS.md``.
On a CPU, ``--offload-frozen`` is a no-op (there is no accelerator to offload from) and 8-bit Adam
needs bitsandbytes on a GPU; those rows say so instead of measuring.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
LEVERS = {
    "baseline (fp32, all levers off)": [],
    "--mixed-precision bf16": ["--mixed-precision", "bf16", "--frozen-dtype", "fp32"],
    "--mixed-precision bf16 --frozen-dtype bf16": ["--mixed-precision", "bf16", "--frozen-dtype", "bf16"],
    "--gradient-checkpointing": ["--gradient-checkpointing"],
    "--teacher-cfg-batch": ["--teacher-cfg-batch"],
    "--offload-frozen": ["--offload-frozen"],
    "--use-8bit-adam": ["--use-8bit-adam"],
    "all of bf16 + bf16 frozen + checkpointing": [
        "--mixed-precision",
        "bf16",
        "--frozen-dtype",
        "bf16",
        "--gradient-checkpointing",
    ],
}


def dry_run(extra: list[str], args, out: Path) -> dict:
    name = f"r{abs(hash(tuple(extra))) % 10**8}"
    # fp32 unless the lever says otherwise (its flag comes later and wins): distill.py's default on a GPU is fp16
    cmd = [
        sys.executable,
        str(ROOT / "training" / "distill.py"),
        "--teacher",
        args.teacher,
        "--data",
        args.data,
        "--output-dir",
        str(out),
        "--run-name",
        name,
        "--resolution",
        str(args.resolution),
        "--num-frames",
        str(args.frames),
        "--frame-interval",
        "1",
        "--num-workers",
        "0",
        "--train-batch-size",
        "1",
        "--gradient-accumulation-steps",
        "1",
        "--lambda-real",
        "0",
        "--disc-backbone",
        "tiny",
        "--lora-rank",
        str(args.rank),
        "--lora-alpha",
        str(args.rank),
        "--dry-run",
        "--mixed-precision",
        "no",
        *extra,
    ]
    proc = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    )
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads((out / name / "dry_run.json").read_text())


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="tiny-animatediff")
    p.add_argument("--data", default="toy")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--rank", type=int, default=8)
    args = p.parse_args(argv)
    on_gpu = torch.cuda.is_available()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, extra in LEVERS.items():
            if not on_gpu and "--offload-frozen" in extra:
                results[label] = {"skipped": "CPU only: nothing to offload to"}
                continue
            if not on_gpu and "--use-8bit-adam" in extra:
                results[label] = {"skipped": "CPU only: bitsandbytes 8-bit Adam needs a GPU"}
                continue
            results[label] = dry_run(extra, args, Path(tmp))
    base = results["baseline (fp32, all levers off)"]
    if "peak_memory_gib" not in base:
        raise SystemExit(f"the baseline dry run failed: {base.get('error')}")
    step_parts = ("distillation step (student, teacher x2, target)", "backward")
    for label, r in results.items():
        if "peak_memory_gib" not in r:
            print(f"{label:48s} {r.get('skipped') or r.get('error')}")
            continue
        step_peak = max(r["peak_memory_gib_per_part"].get(k, 0) for k in step_parts)
        base_peak = max(base["peak_memory_gib_per_part"].get(k, 0) for k in step_parts)
        secs = sum(r["seconds"].get(k, 0) for k in step_parts)
        base_secs = sum(base["seconds"].get(k, 0) for k in step_parts)
        print(
            f"{label:48s} peak {r['peak_memory_gib']:.3f} GiB "
            f"(ratio {r['peak_memory_gib'] / base['peak_memory_gib']:.3f}); "
            f"forward+backward peak {step_peak:.3f} GiB (ratio {step_peak / base_peak:.3f}); "
            f"forward+backward {secs:.2f} s (ratio {secs / base_secs:.2f})"
        )
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{os.environ.get('OMP_NUM_THREADS', 'default')} threads, {'cuda' if on_gpu else 'cpu'}"
    )
    print(
        json.dumps(
            {
                "date": dt.date.today().isoformat(),
                "machine": machine,
                "teacher": args.teacher,
                "resolution": args.resolution,
                "frames": args.frames,
                "memory": base.get("memory"),
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()
