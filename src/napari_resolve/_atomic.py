"""Atomic file writes: write beside the target, fsync, then rename; one writer per output.

A crash, Ctrl-C or a full disk never leaves a half-written output where the
user's file should be: either the old file is intact or the new one is
complete.

Leftovers and races (issue 15, item 6):

* the temporary name carries the host and process id
  (``.NAME.<host>-<pid>.<random>.part.EXT``); a run killed by SIGKILL cannot
  remove its own, so every later write to the same folder removes the
  ``.part`` files of the same target whose process (on this host) is gone;
* a folder output (zarr, pairs folder) being replaced is first moved to a
  unique hidden name, never a fixed ``.NAME.old`` that a killed run would
  leave in the way, and moved back if the swap fails;
* :func:`output_lock` makes a command the only writer of an output for its
  whole run: a second ``predict`` to the same file is refused at its start
  instead of silently replacing the first one's result.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import tempfile
from pathlib import Path

from napari_resolve.errors import InputError

__all__ = ["atomic_path", "output_lock", "remove_stale_parts"]


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:24] or "host"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    except OSError:
        return True
    return True


def remove_stale_parts(path) -> list[Path]:
    """Remove the ``.part`` leftovers of ``path`` whose writer (on this host) is dead."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    pattern = re.compile(
        re.escape(f".{path.stem}.{_host()}-") + r"(\d+)\.[^.]+\.part" + r"(\..*)?$"
    )
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = pattern.match(entry.name)
        if not m or _alive(int(m.group(1))):
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir() and not entry.is_symlink():
                import shutil

                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
    return removed


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
    remove_stale_parts(path)
    sfx = path.suffix if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.stem}.{_host()}-{os.getpid()}.", suffix=f".part{sfx}", dir=path.parent
    )
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


def _lock_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.lock")


@contextlib.contextmanager
def output_lock(path):
    """Hold ``.NAME.lock`` beside ``path`` (created with O_EXCL) for the whole run.

    A lock whose process (on this host) is gone is taken over; a live one
    refuses with one :class:`~napari_resolve.errors.InputError` line.
    """
    path = Path(path)
    lock = _lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    stamp = f"{_host()} {os.getpid()}\n"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                host, pid = lock.read_text().split()
                holder = int(pid)
            except (OSError, ValueError):
                host, holder = _host(), -1
            if host == _host() and holder > 0 and not _alive(holder):
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()  # stale: its run was killed
                continue
            raise InputError(
                f"another napari-resolve run (process {holder} on {host}) is writing {path}; "
                f"wait for it, or remove {lock} if no such run exists"
            ) from None
        with os.fdopen(fd, "w") as fh:
            fh.write(stamp)
        break
    else:  # pragma: no cover - lost a race twice
        raise InputError(f"could not lock {path}; try again")
    try:
        yield lock
    finally:
        with contextlib.suppress(FileNotFoundError):
            if lock.read_text() == stamp:
                lock.unlink()
