"""The model interface shared by every architecture (see docs/architecture.md).

``forward(x, prior=None) -> dict``: ``x`` is the low-resolution image, a float
tensor (N, C, h, w) in [0, 1]; the dict always has ``"sr"`` (N, C, s*h, s*w)
and, where the paper has them, ``"parsing"`` (logits, N, 3, s*h, s*w),
``"stages"`` (list, coarse to fine) and ``"mr"`` (PathSRGAN's medium
resolution). Models whose paper feeds a bicubic-upsampled input upsample inside
``forward`` (MATLAB-exact, :func:`napari_resolve.data.degrade.imresize_torch`).
Any input size works: models pad inside to their size rule and crop back.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn


class SRModel(nn.Module):
    """Base class: scale, channels, size rule and the pad/crop helpers.

    Subclasses set the class attributes and call ``super().__init__(scale, in_channels)``.

    Attributes
    ----------
    scale : int
        Output size / input size.
    in_channels : int
        Channels of ``x`` (1 = grey or the Y of YCbCr, 3 = RGB).
    size_multiple : int
        LR sizes the network needs without padding (tiles snap to it).
    receptive_field : int
        Radius, in LR pixels, beyond which an input pixel cannot change an
        output pixel (``0`` = unknown/global); the tiled predictor uses it.
    global_ops : bool
        True when the network has image-global operations (FFT attention,
        global pooling), so tiled and untiled outputs differ slightly.
    upsamples_input : bool
        True when the paper's network takes the bicubic-upsampled image.
    """

    paper: ClassVar[str] = ""
    size_multiple: ClassVar[int] = 1
    receptive_field: ClassVar[int] = 0
    global_ops: ClassVar[bool] = False
    upsamples_input: ClassVar[bool] = False
    predicts_parsing: ClassVar[bool] = False

    def __init__(self, scale: int, in_channels: int):
        super().__init__()
        self.scale = int(scale)
        self.in_channels = int(in_channels)
        # Filled by models.build(): the registry name and the full config.
        self.arch: str = ""
        self.config: dict = {}

    def pad_input(self, x: torch.Tensor, multiple: int | None = None, mode: str = "reflect"):
        """Pad ``x`` at the bottom/right to a multiple of the size rule.

        Returns the padded tensor and the original (h, w). Reflection keeps the
        statistics of the border (zeros would darken it); for sizes too small
        to reflect, replicate.
        """
        m = multiple or self.size_multiple
        h, w = x.shape[-2:]
        ph, pw = (-h) % m, (-w) % m
        if torch.jit.is_tracing() and m > 1:
            # traced sizes are tensors: pad always (0 px when already a multiple) so that an
            # exported graph (ONNX, dynamic sizes) pads any size as eager does
            return F.pad(x, (0, pw, 0, ph), mode="reflect"), (h, w)
        if ph or pw:
            pad_mode = mode if (mode != "reflect" or (ph < h and pw < w)) else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=pad_mode)
        return x, (h, w)

    def crop_output(self, y: torch.Tensor, hw: tuple[int, int], factor: int | None = None):
        """Crop an output back to ``factor * hw`` (default factor: the model's scale)."""
        f = self.scale if factor is None else factor
        return y[..., : hw[0] * f, : hw[1] * f]

    def check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4:
            from napari_resolve.errors import InputError

            raise InputError(f"model input must be (N, C, h, w), got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            from napari_resolve.errors import InputError

            raise InputError(
                f"{self.arch or type(self).__name__} expects {self.in_channels} channel(s), "
                f"got {x.shape[1]}"
            )


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
