"""The one judge of the fuzz campaign, and its budget.

Every fuzz target feeds generated input to a parser at the trust boundary and hands the outcome to
:func:`judge`. An outcome passes when it is one of:

* ``accepted``: the input was valid and parsed (a generator sometimes makes valid input);
* ``refused``: the project's own error for bad input (the target names which exception types those are),
  whose message names the file, field or flag (``names``: at least one of them must occur in the message),
  on one line, with no traceback;
* ``skipped``: a counted skip where the project documents one (the data loaders).

Anything else (another exception type, a message that names nothing, a traceback) fails the example, and so
does a change to the input's files (:func:`tree_hash` before and after). The counts per target and outcome
are kept in :data:`COUNTS`; with ``MCM_FUZZ_REPORT=<file>`` the session writes them there as JSON
(``tests/fuzz/campaign.py`` does, for the long budget).

Budget: ``MCM_FUZZ_EXAMPLES`` examples per target (default 25: the fast budget CI runs); the campaign sets
thousands. Examples are derandomized unless ``MCM_FUZZ_SEED`` is set, so CI sees the same cases every run.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

from hypothesis import HealthCheck, seed, settings

EXAMPLES = int(os.environ.get("MCM_FUZZ_EXAMPLES", "25"))
SEED = os.environ.get("MCM_FUZZ_SEED")
OUTCOMES = ("accepted", "refused", "skipped")
#: target -> Counter of outcomes (and "examples"), filled by :func:`judge` and :func:`count`
COUNTS: dict[str, Counter] = defaultdict(Counter)


def fuzz_settings(examples: int | None = None) -> settings:
    """Hypothesis settings of a fuzz target: the budget, no deadline (CPU timing varies), no example database
    (a checkout stays clean), derandomized unless a seed is given."""
    return settings(
        max_examples=examples or EXAMPLES,
        deadline=None,
        database=None,
        derandomize=SEED is None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )


def fuzz_target(examples: int | None = None):
    """The decorator of a fuzz target (above ``@given``): :func:`fuzz_settings`, and ``MCM_FUZZ_SEED`` as the
    hypothesis seed when it is set, so that a campaign's run can be repeated exactly."""

    def decorate(test):
        test = fuzz_settings(examples)(test)
        if SEED:
            test = seed(int(SEED) if SEED.isdigit() else SEED)(test)
        return test

    return decorate


def count(target: str, outcome: str, n: int = 1) -> None:
    if outcome not in OUTCOMES:
        raise AssertionError(f"unknown outcome {outcome!r}; expected one of {OUTCOMES}")
    COUNTS[target][outcome] += n
    COUNTS[target]["examples"] += n


def judge(target: str, outcome: str, message: str = "", names: Iterable[str] = ()) -> None:
    """Check one example's outcome (see the module docstring) and count it under ``target``."""
    if outcome == "refused":
        names = [str(n) for n in names if str(n)]
        assert message.strip(), f"{target}: refused without a message"
        assert "Traceback" not in message, f"{target}: a traceback in the message:\n{message}"
        assert "\n" not in message.strip(), f"{target}: a message of several lines:\n{message}"
        assert not names or any(n in message for n in names), f"{target}: the message names none of {names}: {message}"
    count(target, outcome)


def tree_hash(path: Path) -> str:
    """Names, bytes and permission bits of a file, or of everything in a folder (nothing written or changed)."""
    path = Path(path)
    h = hashlib.sha256()
    items = [path] + (sorted(path.rglob("*")) if path.is_dir() else [])
    for p in items:
        if not p.exists() and not p.is_symlink():
            continue
        h.update(f"{p.relative_to(path.parent)}:{stat.S_IMODE(p.lstat().st_mode):o}".encode())
        if p.is_file() and not p.is_symlink():
            h.update(p.read_bytes())
    return h.hexdigest()
