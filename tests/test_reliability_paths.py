"""Issue 15, item 1 (and the path parts of 4): no command ever writes over an input.

Each case is a command a careless user could type; every one must end with
``error: ...`` (exit 2) before any work, and leave the input byte for byte.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from napari_resolve.cli import main
from napari_resolve.io import write_image


def _digest(path: Path) -> str:
    if path.is_dir():
        h = hashlib.sha256()
        for p in sorted(path.rglob("*")):
            if p.is_file():
                h.update(str(p.relative_to(path)).encode())
                h.update(p.read_bytes())
        return h.hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def img(tmp_path, rng) -> Path:
    path = tmp_path / "cell.tif"
    write_image(path, rng.integers(0, 255, (40, 40), dtype=np.uint8))
    return path


def _refused(argv, protected, capsys, needle=""):
    before = {p: _digest(p) for p in protected}
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after any progress bar
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert needle in err, err
    for p, d in before.items():
        assert p.exists() and _digest(p) == d, f"{p} was modified"
    return err


def test_resolution_json_or_plot_onto_the_image_is_refused(img, capsys):
    _refused(["resolution", img, "--json", img], [img], capsys, "input")
    _refused(["resolution", img, "--plot", img.with_suffix(".png"), "--json",
              img.with_suffix(".png")], [img], capsys, "also the")


def test_evaluate_json_onto_an_hr_image_is_refused(img, capsys):
    _refused(["evaluate", "--hr-only", img, "--scale", "2", "--json", img], [img], capsys, "input")


def test_symlink_and_hard_link_to_the_input_are_refused(img, tmp_path, capsys):
    sym = tmp_path / "alias.json"
    sym.symlink_to(img)
    _refused(["resolution", img, "--json", sym, "--overwrite"], [img], capsys, "input")
    hard = tmp_path / "hard.json"
    os.link(img, hard)
    _refused(["resolution", img, "--json", hard, "--overwrite"], [img], capsys, "input")
    hard_tif = tmp_path / "hard.tif"
    os.link(img, hard_tif)
    _refused(["predict", img, "-o", hard_tif, "--model", "bicubic", "--scale", "2",
              "--overwrite"], [img], capsys, "input")


def test_existing_json_needs_overwrite(img, tmp_path, capsys):
    out = tmp_path / "res.json"
    out.write_text("{}")
    _refused(["resolution", img, "--json", out], [out], capsys, "--overwrite")


def test_labels_sidecar_colliding_with_the_input_is_refused(tmp_path, rng, capsys):
    labels = tmp_path / "CELL_labels.tif"
    write_image(labels, rng.integers(0, 3, (32, 32), dtype=np.uint8))
    _refused(["predict", labels, "-o", tmp_path / "CELL.tif", "--model", "gp-x4", "--overwrite"],
             [labels], capsys, "input")
    assert not (tmp_path / "CELL.tif").exists()


def test_zarr_output_containing_its_input_is_refused(tmp_path, rng, capsys):
    zarr = pytest.importorskip("zarr")
    store = tmp_path / "par.zarr"
    group = zarr.open_group(str(store), mode="w")
    group.create_array("0", data=rng.random((32, 32), dtype=np.float32)) if hasattr(
        group, "create_array") else group.create_dataset("0", data=rng.random((32, 32)))
    _refused(["predict", store / "0", "-o", store, "--model", "bicubic", "--scale", "2",
              "--overwrite"], [store], capsys, "contains the input")
    _refused(["predict", store, "-o", store / "sr.zarr", "--model", "bicubic", "--scale", "2"],
             [store], capsys, "inside the input folder")


def test_output_that_is_a_folder_is_refused(img, tmp_path, capsys):
    folder = tmp_path / "out.tif"
    folder.mkdir()
    _refused(["predict", img, "-o", folder, "--model", "bicubic", "--scale", "2", "--overwrite"],
             [img], capsys, "is a folder")
    assert folder.is_dir()


def test_unwritable_output_folder_is_refused_before_the_work(img, tmp_path, capsys):
    # /sys refuses new files even to root (os.access would say yes there);
    # a file as "folder" fails everywhere
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    _refused(["predict", img, "-o", blocker / "out.tif", "--model", "bicubic", "--scale", "2"],
             [img], capsys, "not a folder")
    if Path("/sys").is_dir():
        try:
            (Path("/sys") / ".nr-probe").touch()
        except OSError:
            _refused(["predict", img, "-o", "/sys/out.tif", "--model", "bicubic", "--scale",
                      "2"], [img], capsys, "not writable")


def test_train_and_finetune_outputs_are_no_inputs(img, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    write_image(data / "a.tif", np.zeros((64, 64), np.uint8) + 7)
    link = tmp_path / "m.safetensors"
    link.symlink_to(data / "a.tif")
    _refused(["train", "--arch", "srcnn", "--scale", "2", "--data", data, "-o", link,
              "--overwrite"], [data], capsys, "input")
    from napari_resolve import bundle, models

    base = bundle.save(tmp_path / "base.safetensors", models.build("srcnn", scale=2))
    _refused(["finetune", "--from", base, "--hr", img, "--max-steps", "1", "-o", base,
              "--overwrite"], [base, img], capsys, "input")


def test_register_output_containing_a_scan_is_refused(tmp_path, rng, capsys):
    scans = tmp_path / "scans"
    scans.mkdir()
    low, high = scans / "low.tif", scans / "high.tif"
    write_image(low, rng.integers(0, 255, (32, 32), dtype=np.uint8))
    write_image(high, rng.integers(0, 255, (160, 160), dtype=np.uint8))
    _refused(["register", "--low", low, "--high", high, "--magnifications", "4", "20",
              "-o", scans, "--overwrite"], [low, high], capsys, "contains the input")


def test_full_disk_is_one_line(img, tmp_path, capsys, monkeypatch):
    import errno

    import tifffile

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tifffile, "imwrite", full)
    err = _refused(["predict", img, "-o", tmp_path / "sr.tif", "--model", "bicubic",
                    "--scale", "2"], [img], capsys, "No space left")
    assert "free disk space" in err
    assert not (tmp_path / "sr.tif").exists()
    assert not [p for p in tmp_path.iterdir() if ".part" in p.name]
