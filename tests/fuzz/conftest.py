"""The fuzz campaign's session hook: with ``MCM_FUZZ_REPORT=<file>`` the counts per target are written there.

The hypothesis profile ``no-shrink`` (``pytest --hypothesis-profile no-shrink``) reports the first failing
example as it was drawn: shrinking replays a failure many times, minutes per target where an example runs a
real host."""

from __future__ import annotations

import json
import os
from pathlib import Path

from hypothesis import Phase, settings

from tests.fuzz.judge import COUNTS, EXAMPLES

settings.register_profile("no-shrink", phases=[Phase.explicit, Phase.reuse, Phase.generate])


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
