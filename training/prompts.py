"""Prompt files: one prompt per line (UTF-8, a byte-order mark allowed), blank lines and ``#`` lines skipped."""

from __future__ import annotations

from pathlib import Path


def read_prompts(path: str | Path, flag: str = "--prompts") -> list[str]:
    """The prompts of ``path``, given as ``flag`` (named in the error). A file that cannot be read or holds no
    prompt is an error naming the flag and the file."""
    where = f"{flag} {path}"
    try:
        lines = [line.strip() for line in Path(path).read_text(encoding="utf-8-sig").splitlines()]
    except UnicodeDecodeError as exc:
        raise ValueError(f"{where}: not UTF-8 text (byte {exc.start}); expected one prompt per line") from None
    except OSError as exc:
        raise FileNotFoundError(f"{where}: cannot read it ({exc.strerror})") from None
    except ValueError as exc:  # a name the file system cannot take (a NUL byte)
        raise FileNotFoundError(f"{where}: cannot read it ({exc})") from None
    prompts = [line for line in lines if line and not line.startswith("#")]
    if not prompts:
        raise ValueError(f"{where}: no prompts (expected one prompt per line)")
    return prompts
