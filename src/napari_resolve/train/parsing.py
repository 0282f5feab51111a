"""Pre-training of GP's prior U-Net on parsing maps (paper 000 §2.1, §2.5; issue 14).

Paper 000 trains the prior net end to end with the SR net from the start
(§2.5). On a CPU budget of about 1 % of the paper's that prior never learns to
parse (docs/benchmarks.md, prior study), so the bundled GP models start from a
prior net pre-trained here on segmentation alone, then train end to end with
the paper's loss (Charbonnier + parsing cross entropy). This is a departure
from the paper, recorded in each bundle's metadata.

What the prior net sees here is what it sees inside
:class:`~napari_resolve.models.geometry_prior.GeometryPriorSR`. The bundled
GP models (config ``prior_input="lr"``, ``luma_sr=True``) read the LR RGB
image itself; :func:`pretrain_prior` with ``model=`` trains their prior
through :meth:`~napari_resolve.models.geometry_prior.GeometryPriorSR.parsing_logits`
(the logits upsampled ×s to the mask), batches of LR patches at ×4 and ×8 in
turn. The paper's own input, and the bundles' up to issue 14's sixth round,
is the LR image's Y (BT.601, 0..1) MATLAB-bicubic upsampled to the HR size
(:func:`prior_input`, a bare U-Net). Training pairs:

* the WBC cells of Zheng et al. 2018, both data sets, with their masks
  (0 background — which includes red cells, platelets and glass — 1
  cytoplasm, 2 nucleus; :func:`napari_resolve.data.labels.mask_to_labels`);
  the 12 data-set-2 cells of ``sample_data/`` and the cells of
  :func:`heldout_ids` are never used;
* BCCD smears (every other image; the rest are held out for the red-cell
  check): patches around red-cell boxes that do not touch a white-cell box,
  labelled background everywhere except inside white-cell boxes, which are
  ignored (boxes are not masks).

Augmentations real smears need (choices of ours; the paper has none but flips):
rescaling by a log-uniform factor in ``scale_range`` (dataset-1 cells are
half the size of dataset-2 and BCCD cells), flips and 90° rotations, stain
jitter in HED space (Ruifrok & Johnston; ±25 % per stain, small offsets) and
brightness / contrast / gamma, LR-side Gaussian blur, JPEG compression (the
BCCD smears are JPEG) and Gaussian noise. The SR scale is drawn per sample
from ``scales`` (×4 and ×8: one prior net serves both bundles).

Loss: cross entropy with the cytoplasm weighted 3× (:data:`CLASS_WEIGHTS`)
+ soft Dice (both keep the thin cytoplasm ring from losing against the large
background). Adam, cosine decay to 1 % of the rate.
Checkpoints (weights, optimiser, step, RNG) every ``save_every_s`` seconds;
``resume=True`` continues from one.
"""

from __future__ import annotations

import copy
import io
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from napari_resolve.errors import InputError

__all__ = [
    "heldout_ids",
    "leukocyte_split",
    "bccd_split",
    "ParsingSampler",
    "prior_input",
    "pretrain_prior",
    "load_prior",
    "model_input",
    "model_parser",
]

#: cells never trained on, besides the 12 sample cells: every 15th data-set-1 cell
#: and every 5th data-set-2 cell (by file number)
HELDOUT_RULE = {1: 15, 2: 5}


def heldout_ids(dataset: int, ids) -> list[int]:
    """The cells of ``dataset`` kept out of all leukocyte training (see HELDOUT_RULE)."""
    return [i for i in ids if i % HELDOUT_RULE[dataset] == 0]


def leukocyte_split(root, *, min_size: int = 0):
    """``(train, sample_cells, heldout_cells)`` of the WBC data under ``root``.

    Each is a dict ``{"hr": [RGB uint8], "labels": [uint8 0/1/2], "names": [str]}``.
    ``sample_cells``: the 12 data-set-2 cells of ``sample_data/`` (what ``make
    demo`` evaluates); ``heldout_cells``: :func:`heldout_ids` of both sets.
    ``min_size`` drops smaller training cells (the SR runs use 96-px patches).
    """
    from napari_resolve.data import samples

    demo = set(samples.wbc_ids(2))
    parts = {k: {"hr": [], "labels": [], "names": []} for k in ("train", "sample", "heldout")}
    for dataset in (1, 2):
        ids = samples.wbc_ids(dataset, root=root)
        held = set(heldout_ids(dataset, ids))
        for img, lab, meta in samples.wbc(dataset, root=root):
            ident = int(meta.extra["id"])
            if dataset == 2 and ident in demo:
                key = "sample"
            elif ident in held:
                key = "heldout"
            elif min(img.shape[:2]) >= min_size:
                key = "train"
            else:
                continue
            parts[key]["hr"].append(img)
            parts[key]["labels"].append(lab)
            parts[key]["names"].append(meta.name)
    return parts["train"], parts["sample"], parts["heldout"]


def bccd_split(root):
    """``(train_names, heldout_names)``: even / odd positions of the BCCD image list."""
    from napari_resolve.data import samples

    names = samples.bccd_names(root=root)
    return names[0::2], names[1::2]


# --------------------------------------------------------------------------- input
def prior_input(lr_rgb, scale: int) -> torch.Tensor:
    """(1, 1, H, W) tensor the prior net reads for an LR RGB uint8 image.

    Y of BT.601 (MATLAB ``rgb2ycbcr``) scaled to 0..1 as the bundles'
    ``dtype`` normalisation does, then MATLAB bicubic ×``scale`` as
    :class:`~napari_resolve.models.geometry_prior.GeometryPriorSR` does inside.
    """
    from napari_resolve.data.color import rgb_to_y
    from napari_resolve.data.degrade import imresize_torch

    y = rgb_to_y(np.asarray(lr_rgb, dtype=np.uint8)).astype(np.float32) / 255.0
    return imresize_torch(torch.from_numpy(y)[None, None], scale)


# --------------------------------------------------------------------------- augmentation
def _stain_jitter(rgb: np.ndarray, rng) -> np.ndarray:
    """HED stain jitter + brightness / contrast / gamma on a float RGB image in [0, 1]."""
    from skimage.color import hed2rgb, rgb2hed

    hed = rgb2hed(np.clip(rgb, 1e-4, 1.0))
    hed = hed * rng.uniform(0.75, 1.25, 3) + rng.uniform(-0.02, 0.02, 3)
    out = np.clip(hed2rgb(hed), 0.0, 1.0)
    out = (out - 0.5) * rng.uniform(0.8, 1.2) + 0.5 + rng.uniform(-0.08, 0.08)
    return np.clip(np.clip(out, 0.0, 1.0) ** rng.uniform(0.8, 1.25), 0.0, 1.0)


def _jpeg(rgb_u8: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb_u8).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


def degrade_lr(hr_rgb: np.ndarray, scale: int, rng, *, realistic: bool = True) -> np.ndarray:
    """LR RGB uint8 of an HR RGB float [0, 1] image: MATLAB bicubic, then blur / JPEG / noise."""
    from scipy import ndimage

    from napari_resolve.data.degrade import imresize

    hr_u8 = np.clip(np.rint(hr_rgb * 255.0), 0, 255).astype(np.uint8)
    lr = imresize(hr_u8, 1.0 / scale, channel_axis=-1)
    if not realistic:
        return lr
    lr = lr.astype(np.float64)
    if rng.random() < 0.3:
        sigma = rng.uniform(0.3, 1.0)
        lr = ndimage.gaussian_filter(lr, (sigma, sigma, 0))
    if rng.random() < 0.3:
        lr = lr + rng.normal(0.0, rng.uniform(0.5, 4.0), lr.shape)
    lr = np.clip(np.rint(lr), 0, 255).astype(np.uint8)
    if rng.random() < 0.3 and min(lr.shape[:2]) >= 8:
        lr = _jpeg(lr, rng.integers(40, 96))
    return lr


def _crop_resized(img, lab, patch, factor, rng, center=None):
    """A ``patch``² crop of ``img`` rescaled by ``factor`` (reflect-padded when too small)."""
    from skimage.transform import resize

    side = int(math.ceil(patch / factor)) + 2
    h, w = img.shape[:2]
    pad_y, pad_x = max(0, side - h), max(0, side - w)
    if pad_y or pad_x:
        py, px = (pad_y + 1) // 2 + 1, (pad_x + 1) // 2 + 1
        img = np.pad(img, ((py, py), (px, px), (0, 0)), mode="reflect")
        lab = np.pad(lab, ((py, py), (px, px)), mode="reflect")
        if center is not None:
            center = (center[0] + py, center[1] + px)
        h, w = img.shape[:2]
    if center is None:
        y0, x0 = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
    else:
        jitter = side // 4
        y0 = int(np.clip(center[0] - side // 2 + rng.integers(-jitter, jitter + 1), 0, h - side))
        x0 = int(np.clip(center[1] - side // 2 + rng.integers(-jitter, jitter + 1), 0, w - side))
    img = img[y0 : y0 + side, x0 : x0 + side]
    lab = lab[y0 : y0 + side, x0 : x0 + side]
    out_side = int(round(side * factor))
    img = resize(img, (out_side, out_side), order=1, anti_aliasing=factor < 1, preserve_range=True)
    lab = resize(lab, (out_side, out_side), order=0, anti_aliasing=False, preserve_range=True)
    o = (out_side - patch) // 2
    return img[o : o + patch, o : o + patch], np.rint(lab[o : o + patch, o : o + patch]).astype(np.int64)


class ParsingSampler:
    """Random augmented (input, labels) patches for the prior net; see the module docstring.

    ``cells``: dict with ``hr`` (RGB uint8) and ``labels`` (0/1/2);
    ``smears``: list of ``(RGB uint8, boxes)`` from BCCD (``boxes`` as
    :func:`napari_resolve.data.samples.bccd_smear` gives them) or empty;
    ``smear_fraction``: share of samples drawn from the smears.
    ``balance_sources``: draw data-set-1 crops (small, under 200 px) and data-set-2
    crops equally often (the 300 small crops of one lab's scanner would otherwise
    make 7 of 8 cell samples; smears of other labs look more like data set 2).
    ``wbc_centred``: share of the smear samples centred on a white-cell box instead of a
    red cell (the box itself ignored, the red cells touching it background), so that the
    prior sees red cells right at a white cell's edge, where it paints them cytoplasm.
    ``small_boost``: the range (log-uniform) of the extra magnification of data-set-1
    crops, whose cells are half the size of data set 2's; ``(1.6, 1.6)`` shows them only
    at data-set-2 size, ``(1.0, 1.6)`` also at their own (the x8 LR of a native
    data-set-1 cell is 15 px: a prior never shown cells that small loses them).
    """

    def __init__(self, cells, smears=(), *, patch=128, scales=(4, 8), scale_range=(0.6, 1.6),
                 smear_fraction=0.25, seed=0, balance_sources=True, input_fn=None,
                 small_boost=(1.6, 1.6), wbc_centred=0.0):
        if patch % 16 or any(patch % s for s in scales):
            raise InputError(f"patch {patch} must be a multiple of 16 and of every scale {scales}")
        self.cells = list(zip(cells["hr"], cells["labels"]))
        small = [i for i, (img, _) in enumerate(self.cells) if min(img.shape[:2]) < 200]
        large = [i for i in range(len(self.cells)) if i not in set(small)]
        self.groups = [small, large] if balance_sources and small and large else [
            list(range(len(self.cells)))
        ]
        self.smears = []
        for img, boxes in smears:
            lab = np.zeros(img.shape[:2], np.int64)
            rbc = []
            for b in boxes:
                if b["name"] == "WBC":
                    lab[int(b["ymin"]) : int(b["ymax"]) + 1, int(b["xmin"]) : int(b["xmax"]) + 1] = -1
            for b in boxes:
                if b["name"] in ("RBC", "Platelets"):
                    cy, cx = (b["ymin"] + b["ymax"]) / 2, (b["xmin"] + b["xmax"]) / 2
                    if lab[int(cy), int(cx)] != -1:
                        rbc.append((int(cy), int(cx)))
            wbc = [(int((b["ymin"] + b["ymax"]) / 2), int((b["xmin"] + b["xmax"]) / 2))
                   for b in boxes if b["name"] == "WBC"]
            if rbc:
                self.smears.append((img, lab, rbc, wbc))
        self.patch, self.scales = int(patch), tuple(int(s) for s in scales)
        self.scale_range = scale_range
        self.smear_fraction = float(smear_fraction) if self.smears else 0.0
        self.seed = int(seed)
        self.input_fn = input_fn or prior_input
        self.small_boost = (float(small_boost[0]), float(small_boost[1]))
        self.wbc_centred = float(wbc_centred)

    def sample(self, rng, scale=None, patch=None):
        """One (input (C, h, w) float tensor, labels (H, W) int64 tensor, scale).

        ``scale`` / ``patch`` (HR px) override the drawn scale and ``self.patch``.
        """
        patch = self.patch if patch is None else int(patch)
        lo, hi = np.log(self.scale_range[0]), np.log(self.scale_range[1])
        factor = float(np.exp(rng.uniform(lo, hi)))
        if rng.random() < self.smear_fraction:
            img, lab, centres, wbc = self.smears[int(rng.integers(len(self.smears)))]
            if self.wbc_centred and wbc and rng.random() < self.wbc_centred:
                centres = wbc
            centre = centres[int(rng.integers(len(centres)))]
            # BCCD cells are at about the magnification of data set 2 (median WBC box
            # 138 px, data-set-2 WBC 155 px across): the same scale range fits both
            patch_img, patch_lab = _crop_resized(img, lab, patch, factor, rng, centre)
        else:
            group = self.groups[int(rng.integers(len(self.groups)))]
            img, lab = self.cells[group[int(rng.integers(len(group)))]]
            if min(img.shape[:2]) < 200:  # data set 1: cells half the size of data set 2
                lo_b, hi_b = self.small_boost
                factor *= lo_b if lo_b == hi_b else float(np.exp(rng.uniform(np.log(lo_b),
                                                                              np.log(hi_b))))
            patch_img, patch_lab = _crop_resized(img, lab.astype(np.int64), patch, factor, rng)
        k, flip = int(rng.integers(4)), bool(rng.integers(2))
        patch_img = np.rot90(patch_img, k, axes=(0, 1))
        patch_lab = np.rot90(patch_lab, k, axes=(0, 1))
        if flip:
            patch_img, patch_lab = patch_img[:, ::-1], patch_lab[:, ::-1]
        rgb = _stain_jitter(np.asarray(patch_img, np.float64) / 255.0, rng)
        drawn = self.scales[int(rng.integers(len(self.scales)))]
        scale = drawn if scale is None else int(scale)
        lr = degrade_lr(rgb, scale, rng)
        x = self.input_fn(lr, scale)[0]
        return x, torch.from_numpy(np.ascontiguousarray(patch_lab)), scale

    def batch(self, rng, size, scale=None, patch=None):
        xs, ys = zip(*[self.sample(rng, scale, patch)[:2] for _ in range(size)])
        return torch.stack(xs), torch.stack(ys)


# --------------------------------------------------------------------------- training
def _dice_loss(logits, labels, num_classes=3):
    valid = (labels >= 0).unsqueeze(1).float()
    prob = torch.softmax(logits, 1) * valid
    onehot = F.one_hot(labels.clamp(min=0), num_classes).permute(0, 3, 1, 2).float() * valid
    inter = (prob * onehot).sum((0, 2, 3))
    denom = prob.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    return 1.0 - ((2 * inter + 1.0) / (denom + 1.0)).mean()


#: cross-entropy weights of background, cytoplasm, nucleus: the cytoplasm is a thin ring that
#: an unweighted loss gives up first (IoU 0.04 after 200 steps while the nucleus was at 0.7)
CLASS_WEIGHTS = (1.0, 3.0, 1.0)


def parsing_loss(logits, labels, weights=CLASS_WEIGHTS):
    """Class-weighted cross entropy (pixels labelled -1 ignored) + soft Dice."""
    w = None if weights is None else torch.as_tensor(weights, dtype=logits.dtype, device=logits.device)
    return F.cross_entropy(logits, labels, weight=w, ignore_index=-1) + _dice_loss(logits, labels)


def build_prior_net(base_channels: int = 16, depth: int = 4, in_channels: int = 1):
    """The prior U-Net as GP builds it (``prior_net`` of GeometryPriorSR)."""
    from napari_resolve.models.blocks import UNet

    return UNet(in_channels, 3, base_channels, depth, act="relu", padding_mode="zeros")


def model_input(lr_rgb, in_channels: int) -> torch.Tensor:
    """(1, C, h, w) tensor a GP model reads for an LR RGB uint8 image, as predict feeds it:
    RGB / 255, or for a one-channel model the (unrounded) Y of BT.601 of that."""
    from napari_resolve.data.color import rgb_to_y

    rgb = np.asarray(lr_rgb, np.uint8).astype(np.float32) / 255.0
    arr = rgb_to_y(rgb)[None] if in_channels == 1 else np.moveaxis(rgb, -1, 0)
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None]


def pretrain_prior(sampler: ParsingSampler, output, *, steps: int, batch_size: int = 8,
                   lr: float = 1e-3, base_channels: int = 16, minutes: float | None = None,
                   resume: bool = False, save_every_s: float = 60.0, seed: int = 0,
                   log=print, evaluate=None, eval_every: int = 0, device="cpu", init=None,
                   class_weights=CLASS_WEIGHTS, model=None, lr_patch: int = 32):
    """Train the prior net on ``sampler``; checkpoints to ``output`` (``.pt``, tensors only).

    Returns the trained net (eval mode, on the CPU). ``evaluate(net) -> dict``
    runs every ``eval_every`` steps and at the end, and goes into the log and
    checkpoint. ``init``: a checkpoint to start from (weights only).
    ``class_weights``: cross-entropy weights of background, cytoplasm, nucleus.

    ``model``: a GP model whose ``prior_net`` is trained exactly as the model
    runs it (:meth:`~napari_resolve.models.geometry_prior.GeometryPriorSR.parsing_logits`
    on :func:`model_input`; for ``prior_input="lr"`` the scale alternates
    between the sampler's scales from step to step, every batch ``lr_patch``
    LR px square). Without it, a bare one-channel U-Net of ``base_channels``
    reads :func:`prior_input` (the "y16" config of the bundles up to issue 14's sixth round).
    """
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    dev = torch.device(device)
    if model is None:
        net = build_prior_net(base_channels)
        spec = {"base_channels": base_channels, "depth": 4, "in_channels": 1, "input": "upsampled"}

        def forward(x, scale):
            return net(x)

        def draw(rng, step):  # the scale is drawn per sample (all read the HR size)
            return (*sampler.batch(rng, batch_size), None)
    else:
        net = model.prior_net
        spec = {"base_channels": net.base_channels, "depth": net.depth,
                "in_channels": int(model.in_channels), "input": model.prior_input}
        sampler = copy.copy(sampler)  # the caller's sampler keeps its input
        sampler.input_fn = lambda lr_rgb, scale: model_input(lr_rgb, model.in_channels)

        def forward(x, scale):  # one pass: the sampler already draws the orientations
            return model.parsing_logits_one_pass(x, scale)

        def draw(rng, step):  # one scale per batch: LR sizes differ between scales
            scale = sampler.scales[step % len(sampler.scales)]
            patch = lr_patch * scale if model.prior_input == "lr" else sampler.patch
            return (*sampler.batch(rng, batch_size, scale=scale, patch=patch), scale)
    if init is not None:
        net.load_state_dict(load_prior(init).state_dict())
    net.to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    step, history = 0, []
    if resume and output.exists():
        state = torch.load(output, map_location=dev, weights_only=True)
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step = int(state["step"])
        history = json.loads(state.get("history", "[]")) if isinstance(state.get("history"), str) else []
        log(f"resumed at step {step}")

    def rate(i):  # cosine from lr to lr / 100 over ``steps``
        return lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps)))

    def save():
        tmp = output.with_suffix(".tmp")
        torch.save({"model": {k: v.cpu() for k, v in net.state_dict().items()},
                    "optimizer": opt.state_dict(), "step": step,
                    "history": json.dumps(history), **spec}, tmp)
        tmp.replace(output)

    t0 = time.monotonic()
    last_save = t0
    running = []
    net.train()
    while step < steps:
        rng = np.random.default_rng([seed, step])
        for group in opt.param_groups:
            group["lr"] = rate(step)
        x, y, scale = draw(rng, step)
        loss = parsing_loss(forward(x.to(dev), scale), y.to(dev), class_weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        running.append(float(loss.detach()))
        now = time.monotonic()
        if step % 20 == 0:
            log(f"step {step}/{steps} loss {np.mean(running):.4f} lr {rate(step):.2e} "
                f"{now - t0:.0f}s")
            running = []
        if evaluate is not None and eval_every and step % eval_every == 0:
            net.eval()
            res = evaluate(net if model is None else model)
            net.train()
            history.append({"step": step, **res})
            log(f"eval step {step}: {res}")
        if now - last_save > save_every_s:
            save()
            last_save = now
        if minutes is not None and now - t0 > 60 * minutes:
            log(f"time budget spent at step {step}")
            break
    net.eval()
    save()
    net.cpu()
    if evaluate is not None:
        res = evaluate(net if model is None else model.cpu())
        history.append({"step": step, **res})
        log(f"final eval step {step}: {res}")
    save()
    return net


def load_prior(path, base_channels: int | None = None):
    """The prior U-Net from a :func:`pretrain_prior` checkpoint (``weights_only`` load)."""
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    net = build_prior_net(int(base_channels or state.get("base_channels", 16)),
                          int(state.get("depth", 4)), int(state.get("in_channels", 1)))
    net.load_state_dict(state["model"])
    return net.eval()


def model_parser(model):
    """A parser ``(lr RGB uint8, scale) -> labels`` from a GP model's prior net, fed as
    predict feeds the model (:func:`model_input`); the SR branch does not run."""

    @torch.no_grad()
    def parse(lr, scale):
        x = model_input(lr, model.in_channels).to(next(model.parameters()).device)
        return model.parsing_logits(x, scale)[0].argmax(0).cpu().numpy().astype(np.uint8)

    return parse


def net_parser(net, multiple: int = 16):
    """A parser ``(lr RGB uint8, scale) -> labels`` from a bare prior net (as GP runs it)."""

    @torch.no_grad()
    def parse(lr, scale):
        x = prior_input(lr, scale)
        h, w = x.shape[-2:]
        ph, pw = (-h) % multiple, (-w) % multiple
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if (ph < h and pw < w) else "replicate")
        x = x.to(next(net.parameters()).device)
        return net(x)[0, :, :h, :w].argmax(0).cpu().numpy().astype(np.uint8)

    return parse


def load_smears(root, names):
    """``[(RGB uint8, boxes)]`` of the BCCD images ``names``."""
    from napari_resolve.data import samples

    out = []
    for name in names:
        img, meta = samples.bccd_smear(name, root=root)
        out.append((img, meta.extra["boxes"]))
    return out
