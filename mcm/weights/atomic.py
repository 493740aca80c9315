"""Writing without losing anything: temp file/folder beside the destination, renamed into place.

A crash or error leaves the destination as it was and no temp behind. An existing destination is
replaced only when asked (``overwrite``), must be of the kind written (file or folder), and keeps its
permission bits; a new one gets the usual ``0o666``/``0o777`` less the umask (not ``mkstemp``'s 0600).
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from .format import AdapterError

__all__ = ["atomic_dir", "atomic_file", "parent_folders", "prepare_destination", "replace_files_in"]

FILE, FOLDER = "file", "folder"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The permission bits a new file gets: ``0o666`` less the umask."""
    return 0o666 & ~_umask()


def _mode_for(dst: Path, kind: str) -> int:
    """The permission bits ``dst`` has (when it exists) or a new one of ``kind`` would get."""
    try:
        return stat.S_IMODE(dst.stat().st_mode)
    except OSError:
        return (0o777 if kind == FOLDER else 0o666) & ~_umask()


def prepare_destination(dst: Path, overwrite: bool, kind: str = FILE) -> None:
    """Refuse an existing ``dst`` (unless ``overwrite``) or one of the other kind, or a parent that cannot be
    made. Nothing is created: the missing parent folders are made when the file is written
    (:func:`parent_folders`), so that a refusal after this check leaves nothing behind."""
    dst = Path(dst)
    if dst.exists():
        if (kind == FOLDER) != dst.is_dir():
            have, other = (FOLDER, FILE) if dst.is_dir() else (FILE, FOLDER)
            raise AdapterError(
                f"{dst}: is a {have}, but a {other} is written here; give a new path "
                f"(nothing was changed, also not with --force)"
            )
        if not overwrite:
            raise FileExistsError(f"{dst}: already exists; choose another name or pass overwrite=True (--force)")
    existing = next((p for p in dst.parents if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise AdapterError(f"{dst}: cannot create the folder {dst.parent} ({existing} is a file)")


@contextmanager
def parent_folders(dst: Path):
    """Make the missing parent folders of ``dst`` for the write inside the block; if it fails, the folders
    made here are removed again (nothing written, nothing left behind)."""
    dst = Path(dst)
    made = []  # innermost first
    for parent in dst.parents:
        if parent.exists():
            break
        made.append(parent)

    def remove_made():
        for folder in made:
            try:
                folder.rmdir()
            except OSError:  # not made here after all, or not empty: leave it and what is above it
                break

    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        remove_made()
        raise AdapterError(f"{dst}: cannot create the folder {dst.parent} ({exc.strerror or exc})") from None
    try:
        yield
    except BaseException:
        remove_made()
        raise


def _write_synced(path: Path, write: Callable[[Path], None], mode: int) -> None:
    """``write(path)``, then flush it to disk and give it ``mode``."""
    write(path)
    with open(path, "rb") as f:
        os.fsync(f.fileno())
    os.chmod(path, mode)


def _write_temp(dst: Path, write: Callable[[Path], None], mode: int) -> Path:
    """A complete, synced temp file beside ``dst`` (removed again on failure)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    try:
        _write_synced(Path(tmp), write, mode)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def atomic_file(dst: Path, write: Callable[[Path], None], overwrite: bool) -> Path:
    """``write(tmp)`` then rename ``tmp`` to ``dst``."""
    dst = Path(dst)
    prepare_destination(dst, overwrite, FILE)
    with parent_folders(dst):
        tmp = _write_temp(dst, write, _mode_for(dst, FILE))
        try:
            os.replace(tmp, dst)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return dst


def replace_files_in(folder: Path, writes: dict[str, Callable[[Path], None]]) -> Path:
    """Replace (or add) the named files of an existing folder; every other file in it stays.

    The new folder is assembled beside the old one (the other files hard-linked, or copied where links
    are not possible) and then swapped in as a whole (:func:`atomic_dir`), so that the named files
    change together: a failure at any point leaves the old set, never new weights beside an old
    config. The folder and the replaced files keep their permission bits.
    """
    folder = Path(folder)
    modes = {name: _mode_for(folder / name, FILE) for name in writes}
    with atomic_dir(folder, overwrite=True) as tmp:
        for entry in folder.iterdir():
            if entry.name in writes:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.copytree(entry, tmp / entry.name, symlinks=True, copy_function=_link_or_copy)
            else:
                _link_or_copy(entry, tmp / entry.name)
        for name, write in writes.items():
            _write_synced(tmp / name, write, modes[name])
    return folder


def _link_or_copy(src, dst) -> None:
    """``dst`` as a hard link to ``src`` (a symbolic link is recreated as one), else a copy."""
    if os.path.islink(src):
        os.symlink(os.readlink(src), dst)
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


@contextmanager
def atomic_dir(final: Path, overwrite: bool = False):
    """Yield a temporary sibling folder to write into; on success it is renamed to ``final``.

    A failure leaves ``final`` as it was. An existing ``final`` is an error unless ``overwrite``
    (then it is replaced as a whole; the new folder keeps the old one's permission bits). The old
    folder is first renamed aside and deleted only once the new one is in place, so at every moment
    one complete folder exists (a crash in between leaves the old one beside, as ``.NAME.*.old``).
    """
    final = Path(final)
    if final.exists() and not final.is_dir():
        raise NotADirectoryError(f"{final}: is a file, but a folder is written here; give a new path")
    mode = _mode_for(final, FOLDER)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    old = None
    try:
        yield tmp
        os.chmod(tmp, mode)
        if final.exists():
            if not overwrite:
                raise FileExistsError(f"{final}: already exists; not overwritten")
            old = tmp.with_suffix(".old")
            os.replace(final, old)
        try:
            os.replace(tmp, final)
        except BaseException:
            if old is not None:  # put the old folder back where it was
                os.replace(old, final)
                old = None
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
