"""Camera noise and PSF calibration of real fluorescence data (issue 13, item 1).

Placeholder ranges for the simulator; the fitting functions and fitted values follow.
"""

from __future__ import annotations

__all__ = ["TRAINING_RANGES"]

# Ranges the training simulator draws from (see docs/fluorescence.md for the fit).
TRAINING_RANGES = {
    2: {"photons": (8.0, 1000.0), "background": (1.0, 60.0), "read_noise": (0.5, 3.0),
        "fwhm_lr_px": (3.0, 5.5), "hr_gain": 2.0},
    4: {"photons": (8.0, 1000.0), "background": (1.0, 60.0), "read_noise": (0.5, 3.0),
        "fwhm_lr_px": (2.5, 4.5), "hr_gain": 4.0},
}
