"""Rewrite one marked section of docs/benchmarks.md (shared by the benchmark scripts)."""

from __future__ import annotations

import datetime as dt
import platform
import subprocess
from pathlib import Path

from napari_resolve._atomic import atomic_path

BENCHMARKS_MD = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def write_section(start: str, end: str, table: str, heading: str = "",
                  path: Path = BENCHMARKS_MD) -> Path:
    """Put ``table`` between the ``start`` / ``end`` markers of ``path`` (appended with
    ``heading`` if absent; a missing file is started)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    if start not in text or end not in text:
        title = f"\n## {heading}\n" if heading else ""
        text = text.rstrip("\n") + f"\n{title}\n{start}\n{end}\n"
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(f"{head}{start}\n{table}\n{end}{tail}", encoding="utf-8")
    return path


def measured_line(command: str) -> str:
    """The line a benchmark table starts with: time (UTC), machine, load (``uptime``) and
    the ``command`` that reproduces it."""
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    return (f"Measured {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.machine()} "
            f"({platform.processor() or 'cpu'}), load: `{load}`; `{command}` reproduces it.")


def publish(text: str, tag: str, write: bool) -> None:
    """Print a benchmark's table; with ``write``, also put it between its ``tag`` markers."""
    print(text)
    if write:
        print(f"wrote {write_section(f'<!-- {tag}:start -->', f'<!-- {tag}:end -->', text)}")
