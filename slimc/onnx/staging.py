"""Where an export is written: a temp folder beside the target; nothing appears at the target
unless the export and its check succeed (:meth:`Stage.publish`)."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Iterator

from slimc.atomic import make_dirs, replace

__all__ = ["Stage", "staging_dir"]


class Stage:
    """A temp folder beside the target: the exporters write ``path`` there; ``publish()``
    moves it (external data first) onto the target."""

    def __init__(self, final: str, tmpdir: str) -> None:
        self.final, self.dir = final, tmpdir
        self.path = os.path.join(tmpdir, os.path.basename(final))
        self.published = False

    def clear(self) -> None:
        """Drop what a failed exporter left behind."""
        for f in os.listdir(self.dir):
            p = os.path.join(self.dir, f)
            if os.path.isdir(p):
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.remove(p)

    def publish(self) -> None:
        parent = os.path.dirname(self.final)
        for f in os.listdir(self.dir):
            if f != os.path.basename(self.final):
                replace(os.path.join(self.dir, f), os.path.join(parent, f))
        replace(self.path, self.final)
        self.published = True


@contextlib.contextmanager
def staging_dir(final: str) -> Iterator[Stage]:
    """A :class:`Stage` beside ``final``; removed afterwards, together with the folders
    made for it when nothing was published."""
    parent = os.path.dirname(final)
    created: list[str] = []
    d = parent
    while d and not os.path.isdir(d):
        created.append(d)
        d = os.path.dirname(d)
    make_dirs(parent)  # folders made for an export that is undone go with it (slimc.atomic)
    stage = Stage(final, tempfile.mkdtemp(prefix=".slimc-export-", dir=parent))
    try:
        yield stage
    finally:
        shutil.rmtree(stage.dir, ignore_errors=True)
        if not stage.published:
            for d in created:  # deepest first
                try:
                    os.rmdir(d)
                except OSError:
                    break
