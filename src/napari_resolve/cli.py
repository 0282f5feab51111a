"""The ``napari-resolve`` command line.

Each sub-command is a module in :mod:`napari_resolve.commands` with ``NAME``,
``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``. A
:class:`~napari_resolve.errors.ResolveError` (bad input, unusable file) ends
the command with ``error: <one line>`` on stderr and exit code 2; Ctrl-C with
exit code 130 and no partial output (outputs are written to a temporary file
and renamed).
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading

from napari_resolve import __version__
from napari_resolve.errors import ResolveError

COMMANDS = (
    "predict",
    "evaluate",
    "resolution",
    "train",
    "finetune",
    "register",
    "slide",
    "export",
    "models",
    "demo",
)


def os_error_message(exc: OSError) -> str:
    """One line for an operating-system error (disk full, read-only folder, permission)."""
    import errno

    what = exc.strerror or " ".join(str(exc).split()) or type(exc).__name__
    where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
    hint = {
        errno.ENOSPC: "free disk space or write elsewhere; nothing was written",
        errno.EDQUOT: "free disk space or write elsewhere; nothing was written",
        errno.EROFS: "the folder is read-only; write elsewhere",
        errno.EACCES: "check the permissions or write elsewhere",
        errno.EPERM: "check the permissions or write elsewhere",
    }.get(exc.errno, "check the path and try again")
    return f"{what}{where} ({hint})"


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _sigterm_as_interrupt():
    """SIGTERM unwinds like Ctrl-C, so temporary files are removed (training stops cleanly)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_interrupt)


def _load(name):
    return importlib.import_module(f"napari_resolve.commands.{name}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-resolve",
        description="Super-resolution for light microscopy (napari-resolve).",
    )
    parser.add_argument("--version", action="version", version=f"napari-resolve {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            mod = _load(name)
        except ModuleNotFoundError as exc:
            if exc.name == f"napari_resolve.commands.{name}":
                continue  # a sub-command not written yet
            raise
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.add_argument(
            "--max-pixels", type=int, default=None, metavar="N",
            help="largest image (values: pixels x planes x channels) read into memory "
            "(default 2**27; bigger images: use zarr, read lazily)",
        )
        p.set_defaults(_run=mod.run)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    old_term = _sigterm_as_interrupt()
    try:
        if getattr(args, "max_pixels", None) is not None:
            from napari_resolve.io import set_pixel_limit

            set_pixel_limit(args.max_pixels)
        return int(args._run(args) or 0)
    except ResolveError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: no output written", file=sys.stderr)
        return 130
    except OSError as exc:  # full disk, read-only folder, permission: the user's environment
        print(f"error: {os_error_message(exc)}", file=sys.stderr)
        return 2
    except MemoryError:
        print("error: out of memory; use a smaller image (or a zarr input, which is read "
              "lazily), smaller --tile or --batch", file=sys.stderr)
        return 2
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
        if getattr(args, "max_pixels", None) is not None:
            from napari_resolve.io import set_pixel_limit

            set_pixel_limit(None)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
