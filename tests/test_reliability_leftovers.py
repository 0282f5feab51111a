"""Issue 15, item 6: no leftovers after a killed write, no silent race between two runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from napari_resolve._atomic import _host, output_lock
from napari_resolve.cli import main
from napari_resolve.io import write_image

REPO = Path(__file__).resolve().parents[1]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_sigkilled_writer_leaves_a_part_file_that_the_next_write_removes(tmp_path):
    out = tmp_path / "big.npy"
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    # a writer killed inside atomic_path, after its temporary file exists
    code = (
        "import os, signal\n"
        "from napari_resolve._atomic import atomic_path\n"
        f"with atomic_path({str(out)!r}) as tmp:\n"
        "    tmp.write_bytes(b'x' * 1000)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env)
    assert proc.returncode == -signal.SIGKILL
    parts = [p for p in tmp_path.iterdir() if ".part" in p.name]
    assert len(parts) == 1 and not out.exists()
    # a live writer's temporary file (this process) is not touched
    live = tmp_path / f".big.{_host()}-{os.getpid()}.abc123.part.npy"
    live.write_bytes(b"y")
    write_image(out, np.zeros((4, 4), np.uint8))
    left = sorted(p.name for p in tmp_path.iterdir() if ".part" in p.name)
    assert left == [live.name]
    assert np.load(out).shape == (4, 4)


def test_a_second_predict_to_the_same_output_is_refused(tmp_path, rng, capsys):
    img = tmp_path / "a.tif"
    write_image(img, rng.integers(0, 255, (32, 32), dtype=np.uint8))
    out = tmp_path / "sr.tif"
    with output_lock(out):  # the first run, still writing
        rc = main(["predict", str(img), "-o", str(out), "--model", "bicubic", "--scale", "2"])
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert rc == 2 and "another napari-resolve run" in err, err
        assert not out.exists()
    assert not list(tmp_path.glob(".*.lock"))  # released
    assert main(["predict", str(img), "-o", str(out), "--model", "bicubic", "--scale", "2"]) == 0


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path, rng):
    img = tmp_path / "a.tif"
    write_image(img, rng.integers(0, 255, (32, 32), dtype=np.uint8))
    out = tmp_path / "sr.tif"
    (tmp_path / ".sr.tif.lock").write_text(f"{_host()} {_dead_pid()}\n")
    assert main(["predict", str(img), "-o", str(out), "--model", "bicubic", "--scale", "2"]) == 0
    assert out.exists() and not (tmp_path / ".sr.tif.lock").exists()


def test_sigterm_during_a_write_leaves_no_part_file(tmp_path):
    """SIGTERM unwinds like Ctrl-C in the CLI: the temporary file is removed, exit 130."""
    out = tmp_path / "o.tif"
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    code = (
        "import os, signal, sys\n"
        "import tifffile\n"
        "from napari_resolve import cli\n"
        "def slow_write(path, *a, **k):\n"
        "    open(path, 'wb').write(b'x' * 1000)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "tifffile.imwrite = slow_write\n"
        f"sys.exit(cli.main(['predict', {str(tmp_path / 'a.tif')!r}, '-o', {str(out)!r}, "
        "'--model', 'bicubic', '--scale', '2']))\n"
    )
    write_image(tmp_path / "a.tif", np.zeros((16, 16), np.uint8))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 130, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif"]
