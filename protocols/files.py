"""Writing outputs safely: a file appears whole or not at all (:func:`atomic_file`, :func:`atomic_write`), a folder
appears whole or not at all (:func:`staged_folder`), and the one place fedrt caches derived data (:func:`cache_dir`).

Temporary files and folders live beside their destination (same file system, so the final ``os.replace`` is atomic)
and are removed on any failure, including an interrupt.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from protocols.errors import OutputError

CACHE_ENV = "FEDRT_CACHE"
NEW_FOLDER_FIX = "choose another output folder or delete it"


def cache_dir() -> Path:
    """Where fedrt caches parsed cases, phantoms and downloaded models: ``$FEDRT_CACHE`` or ``~/.cache/fedrt``."""
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "fedrt"))


def _sibling(path: Path, kind: str) -> Path:
    """A fresh hidden name beside ``path`` that keeps its suffix (writers such as numpy and pandas read it)."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.{kind}{path.suffix}")


@contextmanager
def atomic_file(path: Path | str, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; on success it is fsynced and renamed onto ``path``.

    ``mode`` sets the permission bits exactly (e.g. 0o600 for keys); by default a new file's (0o666 less umask).
    On any failure the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path, "tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 if mode is None else mode)
    try:
        if mode is not None:
            os.fchmod(fd, mode)  # exact bits, whatever the umask
        os.close(fd)
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fsync(path: Path) -> None:
    """Flush a written file to disk, so that the rename never exposes a file whose content is still in memory."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path | str, data: bytes | str, mode: int | None = None) -> Path:
    """Write ``data`` (bytes, or text as UTF-8) to ``path`` atomically; see :func:`atomic_file`."""
    path = Path(path)
    with atomic_file(path, mode) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def refuse_non_empty(folder: Path | str, fix: str = NEW_FOLDER_FIX) -> None:
    """Raise :class:`OutputError` unless ``folder`` is new or an empty folder; call it before any work is done."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder} exists and is not a folder; {fix}")
    if folder.is_dir() and any(folder.iterdir()):
        raise OutputError(f"{folder} exists and is not empty; {fix}")


@contextmanager
def staged_folder(folder: Path | str, replace: bool = False, fix: str = NEW_FOLDER_FIX) -> Iterator[Path]:
    """Yield a temporary sibling of ``folder`` to build the output in; on success it is renamed into place.

    ``folder`` must be new or empty (:func:`refuse_non_empty` with ``fix``) unless ``replace``, in which case an
    existing folder is swapped out and deleted after the new one is in place. On any failure the temporary folder
    is removed and ``folder`` is left as it was.
    """
    folder = Path(folder)
    if not replace:
        refuse_non_empty(folder, fix)
    elif folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder} exists and is not a folder; {fix}")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = _sibling(folder, "tmp")
    staging.mkdir()
    try:
        yield staging
        _move_into_place(staging, folder, replace, fix)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _move_into_place(staging: Path, folder: Path, replace: bool, fix: str) -> None:
    """Rename ``staging`` onto ``folder``; an existing folder is refused, removed if empty, or swapped out."""
    if not folder.exists() or (folder.is_dir() and not any(folder.iterdir())):
        os.replace(staging, folder)  # rename(2) replaces an empty folder
        return
    if not replace:
        raise OutputError(f"{folder} was filled while the output was being written; {fix}")
    old = _sibling(folder, "old")
    os.replace(folder, old)
    os.replace(staging, folder)
    shutil.rmtree(old, ignore_errors=True)
