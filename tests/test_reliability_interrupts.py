"""Issue 15, items 5 and 7: interrupted training keeps its state; a state cannot choose outputs.

Ctrl-C and SIGTERM during ``train`` save the best model and the resume
state at the next step; a SIGKILL loses at most ``--checkpoint-every``
seconds; ``--resume`` alone finds the data again (``train`` and
``finetune``); the path stored inside a resume state is never trusted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from napari_resolve import bundle, models
from napari_resolve.io import write_image
from napari_resolve.train.checkpoint import STATE_KEY, read_state_meta, state_path

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def data_dir(tmp_path, rng) -> Path:
    from scipy.ndimage import gaussian_filter

    folder = tmp_path / "hr"
    folder.mkdir()
    for i in range(3):
        img = gaussian_filter(rng.random((48, 48)), 1.5)
        write_image(folder / f"{i}.tif", (img / img.max() * 255).astype(np.uint8))
    return folder


def _cli(args, **kw):
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "napari_resolve.cli", *map(str, args)],
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=env, **kw)


def _wait_for(path: Path, proc, what: str) -> None:
    while not path.exists():  # polls; the run itself decides how long (no timed assertion)
        if proc.poll() is not None:
            raise AssertionError(f"{what}: the run ended first: {proc.stderr.read()}")
        time.sleep(0.2)


TRAIN = ["train", "--arch", "srcnn", "--scale", "2", "--patch-size", "16", "--batch-size", "2",
         "--epochs", "100000", "--quiet"]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_best_model_and_state_then_resume_alone(data_dir, tmp_path, sig):
    out = tmp_path / "m.safetensors"
    proc = _cli([*TRAIN, "--data", data_dir, "-o", out])
    _wait_for(out, proc, "first validated model")  # a step boundary has passed
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    state = state_path(out)
    assert state.exists() and f"--resume {state}" in err
    assert read_state_meta(state)["training"]["stopped"] == "user"
    bundle.load(out)  # the best model is complete
    if sig == signal.SIGTERM:
        return  # the same path as SIGINT; resume is checked once
    steps = read_state_meta(state)["step"]
    # --resume alone: the data come from the state
    resumed = _cli(["train", "--resume", state, "-o", out, "--max-steps", steps + 2, "--quiet"])
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert read_state_meta(state)["step"] == steps + 2


@pytest.mark.slow
def test_sigkill_before_the_first_epoch_ends_leaves_a_resumable_state(data_dir, tmp_path):
    out = tmp_path / "k.safetensors"
    proc = _cli([*TRAIN, "--data", data_dir, "-o", out, "--checkpoint-every", "0"])
    _wait_for(state_path(out), proc, "interval checkpoint")
    proc.kill()
    proc.wait()
    meta = read_state_meta(state_path(out))  # complete, readable
    assert meta["run"]["data"] == str(data_dir)
    resumed = _cli(["train", "--resume", state_path(out), "-o", out,
                    "--max-steps", meta["step"] + 1, "--quiet"])
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert out.exists()


def test_interval_checkpoint_is_written_inside_the_first_epoch(data_dir, tmp_path):
    from napari_resolve.train import train_iter

    out = tmp_path / "i.safetensors"
    gen = train_iter("srcnn", str(data_dir), scale=2, patch_size=16, batch_size=2, epochs=1,
                     output=out, checkpoint_interval_s=0.0, device="cpu")
    kinds = []
    for ev in gen:
        kinds.append(ev.kind)
        if ev.kind == "step":
            break
    assert "epoch" not in kinds
    meta = read_state_meta(state_path(out))
    assert meta["step"] == 1 and meta["batch_in_epoch"] == 1
    gen.close()


def test_finetune_resume_needs_no_data_again(data_dir, tmp_path, capsys):
    from napari_resolve.cli import main

    base = bundle.save(tmp_path / "base.safetensors", models.build("srcnn", scale=2))
    out = tmp_path / "ft.safetensors"
    rc = main(["finetune", "--from", str(base), "--hr", str(data_dir), "--max-steps", "2",
               "--patch-size", "16", "--batch-size", "2", "--quiet", "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    state = state_path(out)
    assert read_state_meta(state)["run"]["data"] == str(data_dir.absolute())
    rc = main(["finetune", "--from", str(base), "--resume", str(state), "--max-steps", "4",
               "--quiet", "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert read_state_meta(state)["step"] == 4


def test_a_crafted_state_cannot_choose_where_the_run_writes(data_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    from napari_resolve.train import train

    first = tmp_path / "a.safetensors"
    train("srcnn", str(data_dir), scale=2, patch_size=16, batch_size=2, max_steps=1,
          output=first, device="cpu")
    meta = read_state_meta(state_path(first))
    evil = tmp_path / "elsewhere" / "evil.safetensors"
    meta["output"] = str(evil)
    crafted = tmp_path / "b.state.safetensors"
    save_file(load_file(str(state_path(first))), str(crafted),
              metadata={STATE_KEY: json.dumps(meta)})
    result = train(None, None, resume=crafted, max_steps=2, device="cpu")
    assert not evil.exists() and not evil.parent.exists()
    assert result.bundle == tmp_path / "b.safetensors"
