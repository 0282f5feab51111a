"""How long the napari window freezes while the panels work (issue 18).

    xvfb-run -a -s "-screen 0 1280x1024x24" .venv/bin/python benchmarks/ui_freeze.py [--minutes 1]

A QTimer ticks every 20 ms in the GUI thread; a gap between two ticks is
time the window could not repaint or take a click. Measured, in a real
(shown) napari viewer:

1. opening the three panels (the time ``add_plugin_dock_widget`` blocks);
2. Super-resolve: ``gp-x4`` on the leukocyte sample's LR layer, ``np-x4`` on
   the 300×300 leukocyte HR layer (a 1200×1200 result);
3. Fine-tune: ``mhtcun-lite-x2`` on the two-photon frame average (the
   panel's defaults, a time budget of ``--minutes``), Stop pressed after
   ``--stop-after`` s: time from Start to the first step and to the first
   loss point drawn, time from Stop to the end of training (the last step
   event) and to the run's end (after the before/after measurement).

Prints one JSON object; the figures go into docs/benchmarks.md ("UI
responsiveness") with the machine's load (``uptime``). It drives the
widgets through their public methods only, so it runs on older versions
too (for before / after figures: ``PYTHONPATH=<old checkout>/src``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

TICK_MS = 20


class Gaps:
    """Longest gap between ticks of a 20-ms QTimer, and how many gaps exceeded 0.25 / 0.5 s."""

    def __init__(self):
        from qtpy.QtCore import QTimer

        self.timer = QTimer()
        self.timer.setInterval(TICK_MS)
        self.timer.timeout.connect(self._tick)
        self.reset()

    def reset(self):
        self.last = time.monotonic()
        self.gaps = []

    def _tick(self):
        now = time.monotonic()
        self.gaps.append(now - self.last)
        self.last = now

    def start(self):
        self.reset()
        self.timer.start()

    def stop(self) -> dict:
        self.timer.stop()
        self._tick()
        g = self.gaps or [0.0]
        return {"longest_gap_s": round(max(g), 3), "gaps_over_0.25_s": sum(x > 0.25 for x in g),
                "gaps_over_0.5_s": sum(x > 0.5 for x in g), "ticks": len(g)}


def wait(app, until, timeout_s: float) -> bool:
    t0 = time.monotonic()
    while not until():
        if time.monotonic() - t0 > timeout_s:
            return False
        app.processEvents()
        time.sleep(0.005)
    return True


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=1.0, help="fine-tuning budget")
    ap.add_argument("--stop-after", type=float, default=25.0, help="press Stop after (s)")
    args = ap.parse_args(argv)
    os.environ.setdefault("NAPARI_CONFIG", os.path.join(tempfile.mkdtemp(), "n.yaml"))
    import napari
    from qtpy.QtWidgets import QApplication

    out = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores", "load_start": os.getloadavg()}
    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    viewer.window._qt_window.resize(1280, 800)
    wait(app, lambda: False, 1.0)
    gaps = Gaps()

    # 1. opening the panels
    opened = {}
    gaps.start()
    for name in ("Super-resolve", "Fine-tune", "Resolution (decorrelation)"):
        t0 = time.monotonic()
        _, widget = viewer.window.add_plugin_dock_widget("napari-resolve", name)
        opened[name] = round(time.monotonic() - t0, 2)
        if name == "Super-resolve":
            sr = widget
        elif name == "Fine-tune":
            ft = widget
    wait(app, lambda: False, 8.0)  # the background imports, if any
    out["open_panels_s"] = opened
    out["open_panels_gaps"] = gaps.stop()

    # 2. super-resolve
    viewer.open_sample("napari-resolve", "leukocyte")
    runs = {}
    for model, layer in (("gp-x4", "leukocyte (LR)"), ("np-x4", "leukocyte (HR)")):
        sr.load_model(model)
        viewer.layers.selection.active = viewer.layers[layer]
        sr.image_combo.setCurrentText(layer)
        gaps.start()
        t0 = time.monotonic()
        sr.super_resolve()
        wait(app, lambda: not sr.running, 900)
        runs[f"{model} on {layer}"] = {"wall_s": round(time.monotonic() - t0, 1), **gaps.stop(),
                                       "status": sr.status.text()[:80]}
    out["super_resolve"] = runs

    # 3. fine-tune
    from napari_resolve.data.samples import twophoton

    viewer.add_image(twophoton("bpae").avg, name="bpae average")
    ft.set_base("mhtcun-lite-x2")
    ft.set_data("hr", ["bpae average"])
    ft.minutes_spin.setValue(args.minutes)
    ft.output_edit.setText(os.path.join(tempfile.mkdtemp(), "bench.safetensors"))
    events = []
    ft.progressed.connect(lambda ev: events.append((time.monotonic(), ev.kind, ev.step)))
    gaps.start()
    t0 = time.monotonic()
    ft.start()

    def first_point():
        ax = getattr(ft, "loss_ax", None)
        return ax is not None and ax.get_lines() and len(ax.get_lines()[0].get_xdata()) > 0

    wait(app, lambda: any(k == "step" for _, k, _ in events) or not ft.running, 600)
    first_step = next((t for t, k, _ in events if k == "step"), None)
    wait(app, first_point, 30)
    t_point = time.monotonic() if first_point() else None
    wait(app, lambda: not ft.running, max(0.0, args.stop_after - (time.monotonic() - t0)))
    t_stop = None
    if ft.running:
        t_stop = time.monotonic()
        ft.stop()
    wait(app, lambda: not ft.running, 900)
    t_end = time.monotonic()
    steps = [(t, s) for t, k, s in events if k == "step"]
    last_step_t = steps[-1][0] if steps else None
    out["finetune"] = {
        "first_step_s": None if first_step is None else round(first_step - t0, 1),
        "first_loss_point_s": None if t_point is None else round(t_point - t0, 1),
        "steps": len(steps),
        "stop_to_last_step_s": (None if t_stop is None or last_step_t is None
                                else round(max(0.0, last_step_t - t_stop), 1)),
        "stop_to_end_s": None if t_stop is None else round(t_end - t_stop, 1),
        "patch_batch": [ft.patch_spin.value(), ft.batch_spin.value()],
        **gaps.stop(),
    }
    out["load_end"] = os.getloadavg()
    viewer.close()
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
