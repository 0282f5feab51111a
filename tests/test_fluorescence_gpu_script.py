"""scripts/train_gpu.py on the CPU with a tiny budget (issue 13, item 7): it trains,
measures both models on the held-out quadrant and ships nothing that does not win."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _script():
    sys.path.insert(0, str(REPO / "scripts"))
    spec = importlib.util.spec_from_file_location("train_gpu", REPO / "scripts" / "train_gpu.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["train_gpu"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_train_gpu_tiny_cpu_run_does_not_ship_a_loser(sample_dir, tmp_path):
    gpu = _script()
    dest = tmp_path / "dest"
    rc = gpu.main(["mhtcun-x2", "--data", str(sample_dir), "--max-steps", "1", "--batch", "2",
                   "--device", "cpu", "--config", json.dumps({"channels": [4, 8, 16], "blocks": 1,
                                                               "reduction": 4}),
                   "--out", str(tmp_path), "--dest", str(dest)])
    assert rc == 0
    report = json.loads((tmp_path / "mhtcun-x2.report.json").read_text())
    assert report["device"] == "cpu" and report["batch"] == 2
    fields = set(report["heldout"])
    assert fields == {"DL-SIM microtubules, normal light", "DL-SIM microtubules, low light"}
    rival = report["rival"]["mhtcun-lite-x2"]
    assert set(rival) == fields
    # one step of a 4-channel net does not beat the bundled lite model: nothing shipped
    assert report["shipped"] is False and not (dest / "mhtcun-x2.safetensors").exists()


def test_largest_batch_on_cpu_is_the_start():
    gpu = _script()
    assert gpu.largest_batch("mhtcun", {}, 2, 64, "cpu", start=8) == 8
