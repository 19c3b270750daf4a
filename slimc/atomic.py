"""Write files atomically: to a temp file beside the target, then rename.

Inside :func:`all_or_nothing` (every ``slimc`` command runs in one, and so does
``CompileResult.save``) the writes of the block are one step: where the block fails — an
error, a full disk, Ctrl-C — every file it renamed into place is removed, every file it
replaced or removed comes back, and the folders it made go again.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from slimc.errors import WriteError, describe


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def follow_umask(folder: Path) -> None:
    """Give ``folder`` and everything below it the modes of a file or folder the user makes
    (``mkdtemp`` makes 0700, ``mkstemp`` and some libraries' writers 0600)."""
    umask = _umask()
    for root, dirs, files in os.walk(folder):
        os.chmod(root, 0o777 & ~umask)
        for f in files:
            p = os.path.join(root, f)
            if not os.path.islink(p):
                os.chmod(p, 0o666 & ~umask)


class _Journal:
    """What the writes of one :func:`all_or_nothing` block did, so that they can be undone."""

    def __init__(self) -> None:
        self.moved: list[tuple[Path, Path | None]] = []  # (a target, the folder its old content waits in)
        self.made: list[Path] = []  # folders made, outermost first

    def set_aside(self, target: Path) -> None:
        """Before ``target`` is replaced or removed: move what is there into a folder beside it."""
        if not (target.exists() or target.is_symlink()):
            self.moved.append((target, None))
            return
        aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
        self.moved.append((target, aside))
        os.replace(target, aside / "x")

    def undo(self) -> None:
        for target, aside in reversed(self.moved):
            _delete(target)
            if aside is not None:
                if os.path.lexists(aside / "x"):
                    os.replace(aside / "x", target)
                shutil.rmtree(aside, ignore_errors=True)
        for d in reversed(self.made):
            with contextlib.suppress(OSError):
                os.rmdir(d)

    def commit(self) -> None:
        for _, aside in self.moved:
            if aside is not None:
                shutil.rmtree(aside, ignore_errors=True)


_JOURNAL: contextvars.ContextVar[_Journal | None] = contextvars.ContextVar("slimc_atomic_journal", default=None)


@contextlib.contextmanager
def all_or_nothing() -> Iterator[None]:
    """The writes of this block (through this module) happen all, or not at all: where the
    block raises, what it wrote is undone. Nested blocks are part of the outermost one."""
    if _JOURNAL.get() is not None:
        yield
        return
    journal = _Journal()
    token = _JOURNAL.set(journal)
    try:
        yield
    except BaseException:
        journal.undo()
        raise
    else:
        journal.commit()
    finally:
        _JOURNAL.reset(token)


def _delete(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.unlink(path)


def make_dirs(path: str | os.PathLike) -> Path:
    """``mkdir -p path``; inside :func:`all_or_nothing`, the folders it made go again if the block fails."""
    p = Path(path)
    missing = []
    d = p
    while not d.exists() and d != d.parent:
        missing.append(d)
        d = d.parent
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteError(f"cannot make the folder '{p}' ({describe(e)}): check its permissions, or choose "
                         "another output path") from e
    journal = _JOURNAL.get()
    if journal is not None:
        journal.made.extend(reversed(missing))
    return p


def replace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """``os.replace(src, dst)``, undone with the rest of a failing :func:`all_or_nothing` block."""
    journal = _JOURNAL.get()
    try:
        if journal is not None:
            journal.set_aside(Path(dst))
        os.replace(src, dst)
    except OSError as e:
        raise _write_error(dst, e) from e


def remove(path: str | os.PathLike) -> None:
    """Remove the file ``path`` if it is there (a stale output), undone like :func:`replace`."""
    journal = _JOURNAL.get()
    if journal is not None:
        journal.set_aside(Path(path))
    else:
        Path(path).unlink(missing_ok=True)


def _write_error(path: str | os.PathLike, e: OSError) -> WriteError:
    return WriteError(f"cannot write '{path}' ({describe(e)}): check the free space and permissions there, "
                      "or choose another output path")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temp path in the target's folder; on success rename it onto ``path``."""
    target = Path(path)
    make_dirs(target.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        try:
            yield tmp
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
        except OSError as e:  # the disk full, the folder gone
            raise _write_error(target, e) from e
        replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp folder beside ``path``; on success it replaces ``path`` (an old folder
    there is moved aside first and removed after), else it is removed."""
    target = Path(path)
    make_dirs(target.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        try:
            yield tmp
            follow_umask(tmp)
        except OSError as e:
            raise _write_error(target, e) from e
        with all_or_nothing():  # the old folder comes back if the new one cannot take its place
            replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
