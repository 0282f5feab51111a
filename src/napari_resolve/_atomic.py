"""Atomic file writes: write beside the target, fsync, then rename.

A crash, Ctrl-C or a full disk never leaves a half-written output where the
user's file should be: either the old file is intact or the new one is
complete.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path, *, suffix: str | None = None):
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    ``suffix`` keeps the extension a writer may look at (default: the target's).
    On any exception the temporary file is removed and ``path`` is untouched.
    Works for files and, with :func:`shutil.rmtree` clean-up, directories
    (zarr stores): the temporary path does not exist when yielded.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sfx = path.suffix if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".part{sfx}", dir=path.parent)
    os.close(fd)
    os.unlink(tmp)
    tmp = Path(tmp)
    try:
        yield tmp
        if tmp.is_file():
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            # plain permissions (rw for owner, r for others under the usual
            # umask), whatever mode the writer or mkstemp used
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        if path.is_dir() and tmp.is_dir():
            import shutil

            # a unique name for the old folder (a fixed ".NAME.old" left by a killed run
            # would block every later --overwrite); it is removed once the new one is in place
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.rmdir(old)
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old, path)  # put the user's folder back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        raise
