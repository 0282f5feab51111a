"""Progress and Cancel inside a tile (issue 18 item 2), tiles from free memory (issue 17 item 2)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from torch import nn

from napari_resolve import predict as P
from napari_resolve.models.base import SRModel
from napari_resolve.predict import engine, predict_iter, tiling


class SlowBlocks(SRModel):
    """A local model of many small blocks, each waiting on an event (no timing needed).

    Every block waits until the test lets it run, so the test decides how far a
    tile gets before it looks at the progress or cancels.
    """

    receptive_field = 0

    def __init__(self, blocks: int = 12):
        super().__init__(2, 1)
        self.blocks = nn.ModuleList(nn.Conv2d(1, 1, 1) for _ in range(blocks))
        self.gate = threading.Semaphore(10_000)
        self.ran = 0

    def forward(self, x, prior=None):
        for b in self.blocks:
            self.gate.acquire()
            x = b(x)
            self.ran += 1
        return {"sr": torch.repeat_interleave(torch.repeat_interleave(x, 2, -1), 2, -2)}


def _next_tile_event(gen):
    """The next event of the tile stage (choosing the runtime may report first)."""
    for ev in gen:
        if ev.stage == "tiles":
            return ev
    raise AssertionError("no tile event")


@pytest.fixture
def fast_events(monkeypatch):
    monkeypatch.setattr(engine, "PROGRESS_EVERY_S", 0.01)


def test_progress_inside_one_tile_has_fraction_and_time_left(fast_events):
    model = SlowBlocks()
    model.gate = threading.Semaphore(0)
    gen = predict_iter(model, np.zeros((16, 16), np.float32), tile=0, device="cpu",
                       backend="eager")
    first = _next_tile_event(gen)
    assert (first.done, first.total, first.fraction) == (0, 1, 0.0)
    seen = []
    try:
        for _ in range(6):  # let six of twelve blocks run, one at a time
            model.gate.release()
            for _ in range(100_000):  # bounded: a failure, never a hang
                ev = _next_tile_event(gen)
                if ev.fraction and ev.fraction >= (len(seen) + 1) / 12 - 1e-9:
                    break
            seen.append(ev)
    finally:
        model.gate.release(100)
    assert all(ev.done == 0 and ev.total == 1 for ev in seen)  # old fields: still per tile
    fractions = [ev.fraction for ev in seen]
    assert fractions == sorted(fractions) and 0.45 < fractions[-1] < 0.55
    assert seen[-1].eta_s is not None and seen[-1].eta_s >= 0
    assert "%" in seen[-1].message
    with pytest.raises(StopIteration) as stop:
        while True:
            next(gen)
    assert stop.value.value.image.shape == (32, 32)


def test_cancel_acts_inside_a_tile(fast_events):
    model = SlowBlocks(blocks=40)
    model.gate = threading.Semaphore(3)  # three blocks may run, then the tile waits
    gen = predict_iter(model, np.zeros((16, 16), np.float32), tile=0, device="cpu",
                       backend="eager")
    _next_tile_event(gen)
    _next_tile_event(gen)  # an event from inside the (blocked) tile
    releaser = threading.Timer(0.05, lambda: model.gate.release(1000))
    releaser.start()  # the tile may go on while the engine cancels it
    gen.close()  # Cancel: the running tile stops at its next block
    releaser.join()
    assert model.ran < 40  # the tile did not run to its end
    assert model.ran >= 3


def test_default_cpu_tile_makes_an_ordinary_image_one_tile(monkeypatch):
    from napari_resolve import bundle

    model, _ = bundle.load("gp-x4")
    monkeypatch.setattr(tiling, "available_memory", lambda: 16 << 30)
    tile = P.default_tile(model, "cpu")
    assert tile >= 640  # the 640 x 480 BCCD smear is one tile: no overlap cost
    size, starts = P.tile_plan(640, tile, P.default_overlap(model), model.size_multiple)
    assert starts == [0] and size == 640
    # little memory: smaller tiles, never below the old default
    monkeypatch.setattr(tiling, "available_memory", lambda: 256 << 20)
    small = P.default_tile(model, "cpu")
    assert small == tiling.legacy_tile(model, "cpu")
    # the estimate grows with the network's widest activation
    assert tiling.bytes_per_pixel(model) > 1e3


def test_memory_budget_is_an_area_not_a_square(monkeypatch):
    """A 480 x 640 image whose area fits the budget runs in one piece even when the
    budget's square side (605) is narrower than the image; larger planes get strips."""
    assert tiling.fit_tile(605, 480, 640) == (480, 640)
    assert tiling.fit_tile(300, 200, 2000, 16) == (200, 448)  # full-height strips
    assert tiling.fit_tile(300, 2000, 200) == (450, 200)
    assert tiling.fit_tile(300, 2000, 3000) == (300, 300)

    model = SlowBlocks(blocks=1)  # one block: ``ran`` counts the forwards
    monkeypatch.setattr(engine, "default_tile", lambda *a, **k: 96)
    img = np.random.default_rng(0).random((80, 110)).astype(np.float32)  # 8800 px < 96²
    r = P.predict(model, img, device="cpu", backend="eager")
    assert model.ran == 1 and r.meta["predict"]["tile"] == [80, 110]
    model.ran = 0  # a plane over the budget: full-height strips, each within it
    P.predict(model, np.zeros((80, 300), np.float32), overlap=8, device="cpu", backend="eager")
    assert model.ran == 3  # 9216 // 80 = 115-px strips (96-px squares would need 4)


def test_dask_chunks_share_the_free_memory(monkeypatch):
    from napari_resolve import bundle

    model, _ = bundle.load("np-x4")
    monkeypatch.setattr(tiling, "available_memory", lambda: 64 << 30)
    one = tiling.memory_tile(model)
    four = tiling.memory_tile(model, share=4)
    assert four < one and abs(four / one - 0.5) < 0.05  # side ~ sqrt(budget)
