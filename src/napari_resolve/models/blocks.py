"""Shared layers for the networks of the four papers.

Section A (convolution + activation, residual blocks, U-Net) is used by the
geometry-prior nets (paper 000), SRSEG / SRResNet (paper 004) and SRCNN.
Section B (appended below by the MHTCUN / DFCAN / PathSRGAN work) holds the
Fourier channel attention, depthwise-separable and dense blocks.

Every convolution here keeps the spatial size ("same" padding, odd kernels),
so the only size rule a network has comes from its poolings / strides.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["conv", "activation", "conv_act", "ResidualBlock", "UNet"]


# ---------------------------------------------------------------------------
# Section A: conv + activation, residual block, U-Net (papers 000, 004; SRCNN)
# ---------------------------------------------------------------------------


def conv(
    in_channels: int,
    out_channels: int,
    kernel_size: int = 3,
    *,
    stride: int = 1,
    bias: bool = True,
    padding_mode: str = "zeros",
) -> nn.Conv2d:
    """2-D convolution with "same" padding (``kernel_size // 2``) for odd kernels.

    ``padding_mode`` is torch's (``"zeros"``, ``"reflect"``, ``"replicate"``).
    """
    if kernel_size % 2 != 1:
        raise ValueError(f"kernel_size must be odd for same padding, got {kernel_size}")
    return nn.Conv2d(
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        padding=kernel_size // 2,
        bias=bias,
        padding_mode=padding_mode,
    )


def activation(name: str = "lrelu", negative_slope: float = 0.2, channels: int = 1) -> nn.Module:
    """Activation by name: ``"lrelu"`` (LeakyReLU), ``"relu"``, ``"prelu"``, ``"none"``.

    ``channels`` is used by ``"prelu"`` only (one slope per channel as in SRGAN).
    """
    name = name.lower()
    if name in ("lrelu", "leakyrelu", "leaky_relu"):
        return nn.LeakyReLU(negative_slope, inplace=False)
    if name == "relu":
        return nn.ReLU(inplace=False)
    if name == "prelu":
        return nn.PReLU(channels)
    if name in ("none", "identity", "linear"):
        return nn.Identity()
    raise ValueError(f"unknown activation {name!r}; use lrelu, relu, prelu or none")


def conv_act(
    in_channels: int,
    out_channels: int,
    kernel_size: int = 3,
    *,
    act: str = "lrelu",
    negative_slope: float = 0.2,
    batch_norm: bool = False,
    stride: int = 1,
    padding_mode: str = "zeros",
) -> nn.Sequential:
    """Conv (same padding) [+ BatchNorm] + activation.

    With BatchNorm the conv has no bias (BN's shift replaces it).
    """
    layers: list[nn.Module] = [
        conv(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            bias=not batch_norm,
            padding_mode=padding_mode,
        )
    ]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    layers.append(activation(act, negative_slope, out_channels))
    return nn.Sequential(*layers)


class ResidualBlock(nn.Module):
    """``x + body(x)`` with body = conv-[BN]-act-conv-[BN][-act].

    Two variants used here:

    * paper 000 (Hua 2020, §2.2 / Fig. 2): conv-LReLU-conv-LReLU + skip, no BN
      (``batch_norm=False, act_after_second=True``);
    * SRResNet / SRSEG (paper 004 §3.1, after Ledig 2017): conv-BN-LReLU-conv-BN
      + skip (``batch_norm=True, act_after_second=False``).
    """

    def __init__(
        self,
        channels: int = 64,
        kernel_size: int = 3,
        *,
        batch_norm: bool = False,
        act: str = "lrelu",
        negative_slope: float = 0.2,
        act_after_second: bool = True,
        padding_mode: str = "zeros",
    ):
        super().__init__()
        layers: list[nn.Module] = [
            conv_act(
                channels,
                channels,
                kernel_size,
                act=act,
                negative_slope=negative_slope,
                batch_norm=batch_norm,
                padding_mode=padding_mode,
            ),
            conv(channels, channels, kernel_size, bias=not batch_norm, padding_mode=padding_mode),
        ]
        if batch_norm:
            layers.append(nn.BatchNorm2d(channels))
        if act_after_second:
            layers.append(activation(act, negative_slope, channels))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class UNet(nn.Module):
    """U-Net (Ronneberger 2015) with configurable depth, width and padding.

    ``depth`` poolings (2×2 max) on the way down, each level two
    ``conv_act`` 3×3; on the way up a 2×2 transposed conv halves the channels,
    the skip features are concatenated, two convs follow; a 1×1 conv maps to
    ``out_channels`` (logits, no activation).

    Unlike the original (valid convolutions, output smaller than input), every
    conv pads ("same"), so the output has the input's size; ``padding_mode``
    picks zeros (paper 000 §2.1: "zero padding ... to keep the size") or
    reflect/replicate. Input height and width must be multiples of
    ``2 ** depth`` (:attr:`size_multiple`); callers pad.

    ``base_channels=64, depth=4`` is Ronneberger's 64…1024 net; paper 000 uses
    half the channels (``base_channels=32``: 32…512).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 3,
        base_channels: int = 32,
        depth: int = 4,
        *,
        act: str = "relu",
        negative_slope: float = 0.2,
        batch_norm: bool = False,
        padding_mode: str = "zeros",
    ):
        super().__init__()
        if depth < 1:
            raise ValueError(f"U-Net depth must be >= 1, got {depth}")
        self.depth = int(depth)
        self.base_channels = int(base_channels)
        self.in_channels = int(in_channels)
        self.size_multiple = 2**self.depth
        kw = dict(
            act=act, negative_slope=negative_slope, batch_norm=batch_norm, padding_mode=padding_mode
        )

        def double(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(conv_act(cin, cout, 3, **kw), conv_act(cout, cout, 3, **kw))

        widths = [base_channels * 2**i for i in range(self.depth + 1)]
        self.down = nn.ModuleList()
        cin = in_channels
        for wdt in widths[:-1]:
            self.down.append(double(cin, wdt))
            cin = wdt
        self.pool = nn.MaxPool2d(2)
        self.bottom = double(widths[-2], widths[-1])
        self.up = nn.ModuleList()
        self.up_conv = nn.ModuleList()
        for wdt in reversed(widths[:-1]):
            self.up.append(nn.ConvTranspose2d(wdt * 2, wdt, kernel_size=2, stride=2))
            self.up_conv.append(double(wdt * 2, wdt))
        self.head = nn.Conv2d(widths[0], out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % self.size_multiple or w % self.size_multiple:
            raise ValueError(
                f"U-Net of depth {self.depth} needs sizes that are multiples of "
                f"{self.size_multiple}, got {h}x{w}"
            )
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottom(x)
        for up, block, skip in zip(self.up, self.up_conv, reversed(skips)):
            x = block(torch.cat([skip, up(x)], dim=1))
        return self.head(x)

    @property
    def receptive_field(self) -> int:
        """Radius (input px) of the receptive field: an honest upper bound.

        Each 3×3 conv at level l (pooled 2**l times) adds 2**l px; each 2×2
        pool / transposed conv adds at most 2**l px more.
        """
        r = 0
        for level in range(self.depth):
            r += 2 * 2**level  # two convs going down
            r += 2 * 2**level  # two convs coming up
            r += 2 * 2**level  # pool + transposed conv at this level (≤ 1 px each, ×2**level)
        r += 2 * 2**self.depth  # bottom
        return r


# ---------------------------------------------------------------------------
# Section B (MHTCUN / DFCAN / PathSRGAN) goes below this line.
# ---------------------------------------------------------------------------

# Section B: depthwise-separable conv, Fourier channel attention (FCA / FCAB),
# dense block with residual scaling (paper 003 MHTCUN, DFCAN, paper 002 PathSRGAN).

import torch.nn.functional as F  # noqa: E402

__all__ += ["DepthwiseSeparableConv", "FourierChannelAttention", "FCAB", "DenseBlock"]


class DepthwiseSeparableConv(nn.Module):
    """Depthwise k×k conv (one filter per channel) then pointwise 1×1 (Howard 2017).

    Paper 003 §4.6: "the kernel size of all depthwise separable convolution
    layers is set to 3×3 and 1×1", i.e. a 3×3 depthwise and a 1×1 pointwise
    conv. No activation or normalisation between the two (MobileNet puts
    BN + ReLU there; the paper does not, and MHTCUN has no BN anywhere), so the
    pair is one linear layer with far fewer weights than a full 3×3 conv.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        self.depthwise = nn.Conv2d(
            in_channels, in_channels, kernel_size, padding=kernel_size // 2, groups=in_channels
        )
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class FourierChannelAttention(nn.Module):
    """Fourier channel attention (FCA) of DFCAN (Qiao 2021, Fig. 1), used by paper 003 Fig. 4.

    Per channel: power spectrum ``|FFT2(x)|^gamma`` (gamma = 0.8), spectrum
    centred (fftshift), 3×3 conv + ReLU on it, global average pooling, 1×1 down
    (``channels // reduction``) + ReLU, 1×1 up + sigmoid: one weight per channel
    that rescales ``x``.

    Choices the papers leave open, and ours:

    * FFT normalisation ``"ortho"`` (DFCAN uses the unnormalised FFT): the
      spectrum keeps the image's energy (Parseval), so the attention does not
      drift with the image size and stays far from float16 overflow.
    * ``|F|^gamma`` is computed as ``(re² + im² + 1e-8)^(gamma/2)``: the exact
      ``|F|^0.8`` has an infinite gradient where a frequency is exactly zero
      (padded or flat feature maps), which would turn gradients into NaN.
    * The FFT runs in float32 with autocast off (cuFFT/pocketfft half precision
      needs power-of-two sizes and loses precision); the result is cast back
      to the input's dtype. Any size works, odd ones included.

    The FFT and the pooling are global: a tile sees a different spectrum than
    the whole image, so tiled inference differs slightly from untiled
    (models using it set ``global_ops = True``, ``receptive_field = 0``).
    """

    def __init__(self, channels: int, reduction: int = 16, gamma: float = 0.8):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.gamma = float(gamma)
        self.spectrum_conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.squeeze = nn.Conv2d(channels, hidden, 1)
        self.excite = nn.Conv2d(hidden, channels, 1)

    def spectrum(self, x: torch.Tensor) -> torch.Tensor:
        """Centred ``|FFT2(x)|^gamma`` per channel, in float32 (float64 stays float64)."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            if x.dtype != torch.float64:
                x = x.float()
            spec = torch.fft.fft2(x, norm="ortho")
            power = (spec.real.square() + spec.imag.square() + 1e-8).pow(self.gamma / 2)
            return torch.fft.fftshift(power, dim=(-2, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spec = self.spectrum(x).to(x.dtype)
        w = F.relu(self.spectrum_conv(spec))
        w = w.mean(dim=(-2, -1), keepdim=True)
        w = torch.sigmoid(self.excite(F.relu(self.squeeze(w))))
        return x * w


class FCAB(nn.Module):
    """Fourier channel attention block: ``x + FCA(act(conv(act(conv(x)))))``.

    * ``conv_kind="dwsep", act="swish"`` — MHTCUN's FCAB (paper 003 §2, Fig. 4b):
      "double depthwise separable convolution layers and swish activation",
      then FCA; the attended features are the residual added to the input.
    * ``conv_kind="full", act="gelu"`` — DFCAN's FCAB (Qiao 2021; paper 003 Fig. 4a):
      two full 3×3 convs with GELU.
    """

    def __init__(
        self,
        channels: int,
        *,
        conv_kind: str = "dwsep",
        act: str = "swish",
        reduction: int = 16,
        gamma: float = 0.8,
    ):
        super().__init__()
        if conv_kind == "dwsep":
            make = lambda: DepthwiseSeparableConv(channels, channels, 3)  # noqa: E731
        elif conv_kind == "full":
            make = lambda: nn.Conv2d(channels, channels, 3, padding=1)  # noqa: E731
        else:
            raise ValueError(f"FCAB conv_kind must be 'dwsep' or 'full', got {conv_kind!r}")
        if act == "swish":
            make_act = nn.SiLU
        elif act == "gelu":
            make_act = nn.GELU
        else:
            raise ValueError(f"FCAB act must be 'swish' or 'gelu', got {act!r}")
        self.body = nn.Sequential(make(), make_act(), make(), make_act())
        self.attention = FourierChannelAttention(channels, reduction, gamma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.attention(self.body(x))


class DenseBlock(nn.Module):
    """Densely connected convs with a scaled local residual (paper 002 Fig. 5, §III-C).

    ``layers`` 3×3 conv + LeakyReLU(0.1), each fed the concatenation of the
    block input and all earlier outputs (DenseNet, Huang 2017, the paper's
    ref. [37]); a 1×1 conv fuses the concatenation back to ``channels`` (RDN's
    local feature fusion) and the block returns ``x + beta * fused`` with
    beta = 0.5 (Fig. 5: "the data at the arrows is integrated using addition
    and β is set to 0.5").

    Left open by the paper, chosen here: 4 layers, growth 32 (ESRGAN's
    numbers), 1×1 fusion (RDN; ESRGAN uses a 3×3 — the 1×1 keeps the 256-channel
    levels of G1 affordable), no normalisation (ESRGAN removed BN from SR
    generators), slope 0.1 everywhere (§III-C states it for G2's DenseBlocks,
    which are "consistent with Figure 5").
    """

    def __init__(
        self,
        channels: int,
        growth: int = 32,
        layers: int = 4,
        *,
        beta: float = 0.5,
        negative_slope: float = 0.1,
    ):
        super().__init__()
        self.beta = float(beta)
        self.layers = nn.ModuleList(
            nn.Sequential(
                conv(channels + i * growth, growth, 3), activation("lrelu", negative_slope)
            )
            for i in range(layers)
        )
        self.fuse = nn.Conv2d(channels + layers * growth, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for layer in self.layers:
            feats.append(layer(torch.cat(feats, dim=1)))
        return x + self.beta * self.fuse(torch.cat(feats, dim=1))


# Section C: output stages calibrated after training (issue 13).

__all__ += ["HazeRemoval"]


class HazeRemoval(nn.Module):
    """Out-of-focus background removal on the SR output: ``y - weight * G_sigma(y)``.

    A wide-field image of a thick cell carries the blur of planes out of
    focus, on a scale of a micrometre; a STORM-like target (a thin section
    of localisations) has none. A network trained on 64-LR-px patches cannot
    see that scale, so it passes the haze through. This stage subtracts a
    fraction ``weight`` of the local background, a Gaussian blur of standard
    deviation ``sigma`` (HR px; separable, replicate padding so that any size
    works, 3 sigma wide). Both values are calibrated after training on the
    checkpoint-selection region (``scripts/train_fluorescence.py``); the
    stage has no weights. It is the fluorescence analogue of ImageJ's
    rolling-ball background subtraction (ours; no paper of the four has it).
    """

    def __init__(self, sigma: float, weight: float):
        super().__init__()
        if not sigma > 0 or not 0 < weight < 1:
            raise ValueError(
                f"haze removal needs sigma > 0 and 0 < weight < 1, got {sigma}, {weight}")
        self.sigma = float(sigma)
        self.weight = float(weight)

    def kernel(self, dtype, device) -> torch.Tensor:
        radius = int(math.ceil(3 * self.sigma))
        t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
        k = torch.exp(-0.5 * (t / self.sigma) ** 2)
        return (k / k.sum()).to(dtype)

    def background(self, y: torch.Tensor) -> torch.Tensor:
        """G_sigma(y): the separable Gaussian, each axis as one FFT convolution (float32).

        A 3-sigma kernel of sigma 256 px has 1537 taps: direct convolution of a
        2560² image took 12 s on two cores, the FFT about 0.3 s, and the result
        is the same to float precision (tested against scipy)."""
        k = self.kernel(torch.float32, y.device)
        out = y.float()
        for dim in (-1, -2):
            out = _fft_blur_axis(out, k, dim)
        return out.to(y.dtype)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y - self.weight * self.background(y)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma:g}, weight={self.weight:g}"


def _fft_blur_axis(y: torch.Tensor, k: torch.Tensor, dim: int) -> torch.Tensor:
    """``y`` (N, C, H, W) convolved with the odd, symmetric ``k`` along ``dim`` (-1 or -2),
    replicate border, same size: pad by the kernel radius, linear convolution by FFT, crop."""
    r = (k.numel() - 1) // 2
    n = y.shape[dim]
    padded = F.pad(y, (r, r, 0, 0) if dim == -1 else (0, 0, r, r), mode="replicate")
    length = padded.shape[dim] + k.numel() - 1
    spectrum = torch.fft.rfft(padded, n=length, dim=dim)
    kernel = torch.fft.rfft(k, n=length)
    kernel = kernel if dim == -1 else kernel[:, None]
    full = torch.fft.irfft(spectrum * kernel, n=length, dim=dim)
    # the linear convolution's sample p + 2r is the centred blur of input sample p
    return full.narrow(dim, 2 * r, n)
