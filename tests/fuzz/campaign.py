"""The long fuzz campaign, in one command; it records its counts in ``tests/fuzz/RESULTS.md``.

    python tests/fuzz/campaign.py                    # 2000 examples per target, a fresh random seed
    python tests/fuzz/campaign.py --examples 200     # a shorter run
    COMFYUI_DIR=... python tests/fuzz/campaign.py --examples 300 --select host --no-shrink   # the real host

It runs ``python -m pytest tests/fuzz`` with ``MCM_FUZZ_EXAMPLES``, ``MCM_FUZZ_SEED`` and ``MCM_FUZZ_REPORT`` set
(``tests/fuzz/judge.py``), then appends a dated entry to ``RESULTS.md``: per target the examples and how many
were accepted, refused with a clear error or skipped and counted, and the failures (the goal is none). The
exit status is pytest's.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def table(report: dict) -> list[str]:
    rows = ["| target | examples | accepted | refused (clear error) | skipped (counted) |", "|---|---|---|---|---|"]
    for target, counts in sorted(report["targets"].items()):
        cells = [str(counts.get(k, 0)) for k in ("examples", "accepted", "refused", "skipped")]
        rows.append(f"| {target} | " + " | ".join(cells) + " |")
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--examples", type=int, default=2000, help="examples per target (default 2000)")
    p.add_argument("--seed", default=None, help="hypothesis seed (default: a fresh random one, recorded)")
    p.add_argument("--select", default=None, metavar="EXPR", help="only the tests pytest -k EXPR selects")
    p.add_argument("--no-shrink", action="store_true", help="report failing examples unshrunk (for the host)")
    p.add_argument("--no-record", action="store_true", help="do not append the counts to RESULTS.md")
    args = p.parse_args(argv)
    seed = args.seed or str(random.SystemRandom().randrange(2**32))
    with tempfile.TemporaryDirectory(prefix="mcm-fuzz-") as tmp:
        report_path = Path(tmp) / "report.json"
        env = {**os.environ, "MCM_FUZZ_EXAMPLES": str(args.examples), "MCM_FUZZ_SEED": seed}
        env["MCM_FUZZ_REPORT"] = str(report_path)
        start = time.time()
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/fuzz"]
        cmd += ["-k", args.select] if args.select else []
        cmd += ["--hypothesis-profile", "no-shrink"] if args.no_shrink else []
        print(f"fuzz campaign: seed {seed}, {args.examples} examples per target", flush=True)
        status = subprocess.run(cmd, cwd=ROOT, env=env).returncode
        seconds = time.time() - start
        if not report_path.exists():
            print("error: the fuzz session wrote no report (did pytest collect tests/fuzz?)", file=sys.stderr)
            return status or 1
        report = json.loads(report_path.read_text())
    lines = [
        f"\n## {dt.date.today()}: {args.examples} examples per target, seed {seed}\n",
        f"- Command: `python tests/fuzz/campaign.py --examples {args.examples} --seed {seed}"
        + (f" --select {args.select!r}" if args.select else "")
        + (" --no-shrink`" if args.no_shrink else "`"),
        f"- Wall time: {seconds / 60:.1f} min; failing tests: {report['failed_tests']}"
        f" (pytest exit status {status}); real-host target: {'yes' if os.environ.get('COMFYUI_DIR') else 'no'}",
        "",
        *table(report),
    ]
    print("\n".join(lines))
    if not args.no_record:
        if not RESULTS.exists():
            RESULTS.write_text(
                "# Fuzz campaign results\n\nEach entry is one run of `python tests/fuzz/campaign.py`, newest last: "
                "per target how many generated inputs were accepted, refused with a clear error, or skipped and "
                "counted. A failure is any other outcome; the goal is none.\n"
            )
        with RESULTS.open("a", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
