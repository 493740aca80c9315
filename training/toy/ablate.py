"""Toy ablations of MCM: the ladder of the paper's Table 4 and the λ_real sweep of Table 6.

    python training/toy/ablate.py                      # all rows, the toy default's length each
    python training/toy/ablate.py --steps 100 --only ladder

Every row is a toy-default run of ``training/distill.py`` (a subprocess each, its own run folder under
``--output-dir``) with one thing changed, evaluated on the toy metrics (``training/toy/metrics.py``). The
teacher rows come from the first run (the teacher is the same in all). Writes ``ablations.md`` (the
table) and ``ablations.json`` next to the run folders; an existing table is never overwritten (a new
output folder is made per invocation). Rerunning with the ``--output-dir`` of an interrupted invocation
reuses its finished rows (those with a ``metrics.json``) and runs the rest.

Ladder (Table 4): consistency distillation on the raw latents, real trajectories only, no
discriminator → + the frame discriminator on clean images → + the motion loss through the learnable
head → + mixed trajectories (the full method, the toy default). Sweep (Table 6): λ_real, the fraction
of micro-batches on real-data trajectories (the rest start from the student's own one-step sample).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(ROOT))

from training.toy.metrics import PAIRED, agreement, alike_where_reference_moves, paired_difference  # noqa: E402

LADDER = [
    (
        "CD only (raw latents, real trajectories, no discriminator)",
        ["--motion-repr", "raw", "--lambda-real", "1", "--no-disc"],
    ),
    ("+ frame discriminator (clean images)", ["--motion-repr", "raw", "--lambda-real", "1"]),
    ("+ motion loss (learnable head)", ["--motion-repr", "learn", "--lambda-real", "1"]),
    ("+ mixed trajectories (λ_real 0.5) = MCM", ["--motion-repr", "learn", "--lambda-real", "0.5"]),
]
SWEEP = [(f"λ_real {v:g}", ["--lambda-real", f"{v:g}"]) for v in (0.0, 0.25, 0.5, 0.75, 1.0)]
COLUMNS = [  # (metric, header, better)
    ("correct", "motion correct ↑", max),
    ("coherent", "coherent motion ↑", max),
    ("moves_like_teacher", "moves like the teacher ↑", max),
    ("velocity_error", "velocity error (px/frame) ↓", min),
    ("watermark", "watermark ↓", min),
    ("sharpness", "sharpness ↑", max),
    ("visible", "shape visible ↑", max),
    ("grain", "grain ↓", min),
    ("fd_clean", "FD to clean ↓", min),
    ("fd_degraded", "FD to degraded ↑", max),
    ("d_accuracy", "D accuracy (last 50 steps)", max),
]


def run_row(args, name: str, flags: list[str], index: int, with_teacher: bool) -> dict:
    run_name = f"{index:02d}-" + "".join(c if c.isalnum() else "-" for c in name.lower())[:40].strip("-")
    cmd = [
        sys.executable,
        str(ROOT / "training" / "distill.py"),
        "--output-dir",
        str(args.output_dir),
        "--run-name",
        run_name,
        "--eval-seeds",
        str(args.eval_seeds),
        "--eval-teacher-steps",
        "4,50" if with_teacher else "",
        *flags,
    ]
    if args.steps:
        cmd += ["--max-train-steps", str(args.steps)]
    done = Path(args.output_dir) / run_name / "metrics.json"
    if done.exists():  # a finished row of an interrupted invocation (same --output-dir): not run again
        print(f"== {name}: reusing {done.parent}", flush=True)
        return read_row(done.parent)
    print(f"== {name}\n   {' '.join(cmd[1:])}", flush=True)
    start = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT)
    report = read_row(done.parent)
    report["wall_seconds"] = round(time.time() - start, 1)
    return report


def read_row(run_dir: Path) -> dict:
    """A finished run's ``metrics.json``, with its discriminator's accuracy over the last 50 logged steps."""
    report = json.loads((run_dir / "metrics.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
    report["d_accuracy"] = summary.get("discriminator", {}).get("d_accuracy_last_50")
    return report


def table(title: str, rows: list[tuple[str, dict[int, dict]]], steps: list[int], skip: tuple[str, ...] = ()) -> str:
    """A markdown table: motion correctness and coherence per step count, the other metrics at the last step
    count. ``rows`` holds ``(name, {steps: metrics})``; a row without a step count leaves its cells empty;
    ``skip`` drops columns."""
    per_step = ("correct", "coherent", "moves_like_teacher")
    columns = [(m, h, n) for m, h, _ in COLUMNS if m not in skip for n in (steps if m in per_step else steps[-1:])]
    header = [h + (f" ({n}-step)" if m in per_step and len(steps) > 1 else "") for m, h, n in columns]
    lines = [f"### {title}", "", "| row | " + " | ".join(header) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, per_step in rows:
        cells = [per_step.get(n, {}).get(m) for m, _, n in columns]
        lines.append(f"| {name} | " + " | ".join("" if v is None else f"{v:.3g}" for v in cells) + " |")
    return "\n".join(lines) + "\n"


def mcm_rows(report: dict, steps: list[int], teacher: list[dict] | None = None) -> dict[int, dict]:
    """``{steps: metrics}`` of a run's MCM samples; the discriminator's accuracy goes with every step count;
    ``teacher``: the teacher's 50-step clips on the same prompts and noise, for ``moves_like_teacher``."""
    metrics, clips = report["metrics"], report.get("per_clip", {})
    rows = {}
    for n in steps:
        name = f"MCM {n}-step"
        if name in metrics:
            rows[n] = {**metrics[name], "d_accuracy": report.get("d_accuracy")}
            if teacher and name in clips:
                rows[n]["moves_like_teacher"] = agreement(clips[name], teacher)["moves_like"]
    return rows


def teacher_clips(report: dict) -> list[dict] | None:
    """The per-clip motion of the teacher's 50-step samples in a run's report (the first run samples it)."""
    name = next((k for k in report.get("per_clip", {}) if k.startswith("teacher 50")), None)
    return report["per_clip"][name] if name else None


def paired_cell(d: dict) -> str:
    """One table cell of a :func:`training.toy.metrics.paired_difference`: difference ± standard error
    (wins:losses, p)."""
    return f"{d['difference']:+.3f} ± {d['standard_error']:.3f} ({d['wins']}:{d['losses']}, p {d['sign_test_p']:.2g})"


def paired_rows(title: str, pairs: list[tuple[str, dict, str, dict]], step: int, teacher: list[dict] | None) -> str:
    """Clip-by-clip comparisons of ``step``-step MCM samples between rows (every run samples the same prompts
    from the same noise): for each ``(name, report, baseline name, baseline report)``, the difference in
    each 0/1 score with its standard error and the exact sign test (``training.toy.metrics.paired_difference``)."""
    keys = ["correct", "coherent"] + (["moves_like_teacher"] if teacher else [])
    lines = [
        f"### {title}",
        "",
        "| row | against | " + " | ".join(f"{k} ({step}-step)" for k in keys) + " |",
        "|---" * (len(keys) + 2) + "|",
    ]
    for name, report, base_name, base in pairs:
        a, b = report["per_clip"][f"MCM {step}-step"], base["per_clip"][f"MCM {step}-step"]
        cells = []
        for key in keys:
            if key == "moves_like_teacher":  # over the clips where the teacher moves coherently
                x, y = alike_where_reference_moves(a, teacher), alike_where_reference_moves(b, teacher)
            else:
                x, y = [c[key] for c in a], [c[key] for c in b]
            cells.append(paired_cell(paired_difference(x, y)))
        lines.append(f"| {name} | {base_name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def teacher_pair_rows(name: str, report: dict, teacher_report: dict, step: int) -> str:
    """The ``step``-step MCM samples of one run against each of the teacher's sample sets (``teacher_report``
    holds them; every run samples the same prompts from the same noise), clip by clip on each 0/1 score
    of ``training.toy.metrics.PAIRED``: does the student beat its teacher at the same step count, and how far is it
    from the teacher's 50 steps?"""
    teachers = [k for k in teacher_report.get("per_clip", {}) if k.startswith("teacher")]
    ours = report["per_clip"][f"MCM {step}-step"]
    lines = [
        f"### The full method (the toy default) against its teacher ({step}-step, paired)",
        "",
        "| row | against | " + " | ".join(PAIRED) + " |",
        "|---" * (len(PAIRED) + 2) + "|",
    ]
    for t in teachers:
        theirs = teacher_report["per_clip"][t]
        cells = []
        for key in PAIRED:
            cells.append(paired_cell(paired_difference([c[key] for c in ours], [c[key] for c in theirs])))
        lines.append(f"| {name}, {step}-step | {t} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--output-dir", default=None, help="folder for the runs and the table (default: runs/ablations-<date-time>)"
    )
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default: the toy default's)")
    p.add_argument(
        "--eval-seeds",
        type=int,
        default=16,
        help="samples per toy prompt (16: 128 clips a row, so that a paired difference of 0.1 is resolved)",
    )
    p.add_argument("--only", choices=["ladder", "sweep"], default=None, help="run one of the two tables")
    args = p.parse_args(argv)
    args.output_dir = Path(args.output_dir or ROOT / "runs" / dt.datetime.now().strftime("ablations-%Y%m%d-%H%M%S"))
    if (args.output_dir / "ablations.md").exists():
        p.error(f"{args.output_dir}/ablations.md exists; pick a new --output-dir")
    args.output_dir.mkdir(parents=True, exist_ok=True)

    results, done = {}, {}
    plan = ([("ladder", n, f) for n, f in LADDER] if args.only != "sweep" else []) + (
        [("sweep", n, f) for n, f in SWEEP] if args.only != "ladder" else []
    )
    for i, (part, name, flags) in enumerate(plan):
        key = tuple(flags) if part == "ladder" else ("--motion-repr", "learn", "--lambda-real", flags[1])
        if key in done:  # the same configuration in both tables (the full method): run it once
            results[(part, name)] = done[key]
            continue
        report = run_row(args, name, flags, i, with_teacher=not results)
        results[(part, name)] = done[key] = report
    first = next(iter(results.values()))
    steps = [1, 2, 4]
    reference = [(k, {steps[-1]: v}) for k, v in first["metrics"].items() if not k.startswith("MCM")]
    out = [
        f"# Toy ablations ({dt.date.today()}, {first['run']['steps']} steps per run, {args.eval_seeds} samples per "
        "prompt)",
        "",
    ]
    out.append(
        "MCM columns are the distilled student; the reference rows (teacher, data) score the teacher's samples and the "
        "toy data themselves with the same metrics. Motion correct: share of clips whose tracked shape moves in the "
        "captioned direction at the captioned speed class. Coherent motion: share of clips whose shape moves along a "
        "straight constant-speed path, whatever the caption. Moves like the teacher: share of the clips where the "
        "teacher's 50-step sample (same prompt, same noise) moves coherently in which the student moves the same way "
        "(within 45°, same speed class). FD: Fréchet distance of frame-quality features. Paired tables: every run "
        "samples the same prompts from the same noise, so rows are compared clip by clip (wins:losses are the clips "
        "where only one of the two succeeds; p is the exact sign test on them).\n"
    )
    teacher = teacher_clips(first)
    for part, title in (("ladder", "Table 4 ladder"), ("sweep", "Table 6: λ_real")):
        rows = [(name, mcm_rows(r, steps, teacher)) for (p_, name), r in results.items() if p_ == part]
        if rows:
            out.append(table(title, rows, steps))
    if all("per_clip" in r for r in results.values()):
        ladder = [(n, r) for (p_, n), r in results.items() if p_ == "ladder"]
        sweep = [(n, r) for (p_, n), r in results.items() if p_ == "sweep"]
        mix = next((r for n, r in sweep if n == "λ_real 0.5"), None)
        pairs = [
            (
                "ladder",
                f"Table 4, each row against the one before ({steps[-1]}-step, paired: wins:losses, sign test)",
                [(n, r, bn, br) for (bn, br), (n, r) in zip(ladder, ladder[1:])],
            ),
            (
                "sweep",
                f"Table 6, each λ_real against the mix λ_real 0.5 ({steps[-1]}-step, paired)",
                [(n, r, "λ_real 0.5", mix) for n, r in sweep if r is not mix] if mix else [],
            ),
        ]
        for _, title, rows in pairs:
            if rows:
                out.append(paired_rows(title, rows, steps[-1], teacher))
        full = next((r for n, r in ladder if n.endswith("= MCM")), mix)
        if full is not None and teacher:
            out.append(teacher_pair_rows("MCM", full, first, steps[-1]))
    out.append(
        table(
            "Reference rows (motion correct and metrics of these samples)", reference, steps[-1:], skip=("d_accuracy",)
        )
    )
    (args.output_dir / "ablations.md").write_text("\n".join(out))
    (args.output_dir / "ablations.json").write_text(
        json.dumps({f"{k[0]}: {k[1]}": v for k, v in results.items()}, indent=2)
    )
    print("\n".join(out))
    print(f"wrote {args.output_dir / 'ablations.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
