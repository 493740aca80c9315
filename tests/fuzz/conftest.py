"""The fuzz campaign's session hook: with ``MCM_FUZZ_REPORT=<file>`` the counts per target are written there."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.fuzz.judge import COUNTS, EXAMPLES


def pytest_sessionfinish(session, exitstatus):
    report = os.environ.get("MCM_FUZZ_REPORT")
    if report:
        failed = session.testsfailed
        data = {
            "examples_per_target": EXAMPLES,
            "failed_tests": failed,
            "targets": {k: dict(v) for k, v in COUNTS.items()},
        }
        Path(report).write_text(json.dumps(data, indent=2, sort_keys=True))
