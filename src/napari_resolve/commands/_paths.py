"""Output paths checked against the inputs before any work starts (issue 15, item 1).

Every command calls :func:`check_outputs` with everything it reads and
everything it will write (main output, sidecars such as ``OUT_labels.tif``,
``--json``, ``--plot``, resume states, zarr folders) *before* it loads a
model or reads an image. An output is refused, with one line naming both
paths, when

* it is an input: the same path, a symbolic link to it, or a hard link to the
  same file (``os.path.samefile``);
* it lies inside an input zarr store (it would corrupt the store), replaces a
  file inside an input folder, or an input lies inside it (``predict
  par.zarr/0 -o par.zarr`` would delete what it reads); a new file written
  into a plain data folder is allowed;
* two outputs are the same file (``--json X --plot X``);
* it exists and ``--overwrite`` was not given; it is a folder where a file is
  written (or a file where a folder is written);
* its folder cannot be written: checked by creating (and removing) a
  temporary file there, because ``os.access`` says yes on read-only mounts
  and to root.
"""

from __future__ import annotations

import contextlib
import glob
import os
import tempfile
from pathlib import Path

from napari_resolve.errors import InputError

__all__ = ["check_outputs", "expand_inputs", "check_writable"]


def _real(path: Path) -> Path:
    return Path(os.path.realpath(os.path.abspath(os.fspath(path))))


def _inside(child: Path, parent: Path) -> bool:
    return child != parent and parent in child.parents


def _is_store(path: Path) -> bool:
    """A zarr / OME-Zarr folder (its files belong to one array)."""
    if not path.is_dir():
        return False
    if path.suffix.lower() == ".zarr":
        return True
    return any((path / n).exists() for n in ("zarr.json", ".zarray", ".zgroup", ".zattrs"))


def expand_inputs(items) -> list[Path]:
    """Paths of what a command reads: files, folders, and the matches of glob patterns."""
    out: list[Path] = []
    for item in items or []:
        if item is None:
            continue
        if isinstance(item, dict):
            out.extend(expand_inputs(item.values()))
            continue
        if isinstance(item, (list, tuple)):
            out.extend(expand_inputs(item))
            continue
        text = os.fspath(item)
        if any(ch in text for ch in "*?[") and not os.path.exists(text):
            out.extend(Path(p) for p in glob.glob(text))
        else:
            out.append(Path(text))
    return out


def check_writable(folder: Path, what: str) -> None:
    """Refuse a folder the command cannot create files in (tries a temporary file)."""
    folder = Path(folder)
    probe = folder
    while not probe.exists():  # the first existing ancestor: mkdir will start there
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise InputError(f"cannot write {what}: {probe} is a file, not a folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".napari-resolve-write-test.", dir=probe)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise InputError(
            f"cannot write {what}: folder {probe} is not writable ({reason}); "
            "choose another output folder"
        ) from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(tmp)


def check_outputs(inputs, outputs, *, overwrite: bool = False) -> None:
    """Refuse outputs that would touch an input, each other, or an existing file.

    ``inputs``: paths (files, folders, glob patterns; ``None`` ignored).
    ``outputs``: ``(path, what, kind)`` triples, ``kind`` ``"file"`` or
    ``"folder"``; ``None`` paths are ignored. Raises
    :class:`~napari_resolve.errors.InputError` (one line) on the first problem.
    """
    ins = [(p, _real(p)) for p in expand_inputs(inputs)]
    seen: dict[Path, str] = {}
    for item in outputs:
        path, what, kind = item
        if path is None:
            continue
        path = Path(path)
        real = _real(path)
        for src, src_real in ins:
            same = real == src_real
            if not same and path.exists() and src.exists():
                with contextlib.suppress(OSError):
                    same = os.path.samefile(path, src)
            if same:
                raise InputError(
                    f"{what} {path} is the input {src}: refusing to overwrite an input; "
                    "choose another output name"
                )
            if _inside(real, src_real) and (_is_store(src) or real.exists()):
                raise InputError(
                    f"{what} {path} lies inside the input folder {src}; "
                    "write outputs outside the inputs"
                )
            if _inside(src_real, real):
                raise InputError(
                    f"{what} {path} contains the input {src}: replacing it would delete the "
                    "input; choose another output name"
                )
        if real in seen:
            raise InputError(f"{what} {path} is also the {seen[real]}; give them different names")
        seen[real] = what
        if path.exists() or path.is_symlink():
            if kind == "file" and path.is_dir():
                raise InputError(f"{what} {path} is a folder; give a file name")
            if kind == "folder" and path.exists() and not path.is_dir():
                raise InputError(f"{what} {path} is a file; give a folder name")
            if not overwrite:
                raise InputError(f"output {path} exists; pass --overwrite to replace it")
        check_writable(path.parent if str(path.parent) else Path("."), f"{what} {path}")
