"""Paired training data: (LR, HR[, labels]) from folders, file lists or arrays in memory.

One class, :class:`SRDataset`, built by :func:`make_dataset` from whatever the
user has:

* a folder with ``LR/`` and ``HR/`` sub-folders (files paired by name), or
  ``lr=`` / ``hr=`` folders or file lists (real pairs, paper 002);
* HR images only (a folder, a glob, a list of paths or arrays, napari layer
  data): the LR input is made with the model's degradation
  (:func:`degrade`): MATLAB bicubic by default (papers 000 §3.1, 004 §4) or a
  simulated wide-field microscope (:mod:`napari_resolve.data.fluorescence`);
* optional label images (0 background, 1 cytoplasm, 2 nucleus; 8-bit masks
  0/128/255 as the WBC set are mapped to the nearest) for parsing-map
  (paper 000) or segmentation (paper 004) supervision;
* :class:`~napari_resolve.data.fluorescence.FluorescenceSample` lists.

Each item is a dict of float32 tensors ``"lr"`` (C, h, w), ``"hr"`` (C, s·h,
s·w) in [0, 1] after the bundle's normalisation, ``"labels"`` (s·h, s·w)
int64 or -1 where absent, and ``"index"``. Training samples are random
patches (``patch_size`` HR px, None = whole images as paper 000 §2.4) with
random flips and 90° rotations; the randomness of sample ``i`` in epoch ``e``
comes from the seed sequence ``[seed, e, i]`` only, so runs are reproducible
and every DDP process sees exactly the sample a single process would.

Choices the papers leave open: RGB images for one-channel models use the Y of
MATLAB's YCbCr (paper 000 §2.4); LR images are made from the raw image
(integer rounding as MATLAB) before colour conversion and normalisation;
pairs are normalised separately (CSBDeep); patches are drawn uniformly but a
candidate whose HR standard deviation is under half the image's is redrawn
(up to 10 times) so sparse fluorescence does not train on empty background.
"""

from __future__ import annotations

import glob
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from napari_resolve.errors import InputError

__all__ = [
    "IMAGE_SUFFIXES",
    "SRDataset",
    "make_dataset",
    "read_image",
    "read_labels",
    "degrade",
    "collate",
    "describe",
]


def _suffixes():
    from napari_resolve.io import READ_SUFFIXES

    return READ_SUFFIXES


IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".bmp", ".jpg", ".jpeg", ".mrc", ".npy")


# --------------------------------------------------------------------------- reading
def read_image(path) -> np.ndarray:
    """Read one image file with :func:`napari_resolve.io.read_image` (pickles refused)."""
    from napari_resolve.io import read_image as _read

    arr, _ = _read(path)
    arr = np.asarray(arr)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise InputError(f"{Path(path).name}: not a real-valued image (dtype {arr.dtype})")
    return arr


def read_labels(src, name: str = "labels") -> np.ndarray:
    """Labels 0/1/2 as int64 from a path or array; 8-bit masks 0/128/255 map to the nearest."""
    arr = read_image(src) if isinstance(src, (str, Path)) else np.asarray(src)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise InputError(f"{name}: labels must be a 2-D image, got shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise InputError(f"{name}: labels contain NaN")
        arr = np.rint(arr)
    vmax = arr.max() if arr.size else 0
    if arr.min() < 0:
        raise InputError(f"{name}: labels must be >= 0, found {arr.min()}")
    if vmax > 2:  # 8-bit parsing masks (WBC set: 0 background, 128 cytoplasm, 255 nucleus)
        from napari_resolve.data.labels import mask_to_labels

        arr = mask_to_labels(arr)
    return arr.astype(np.int64)


def _planes(arr: np.ndarray, name: str) -> list[np.ndarray]:
    """Split an image into 2-D planes (H, W) or RGB planes (H, W, 3)."""
    if arr.ndim == 2:
        return [arr]
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        return [arr[..., :3]]
    if arr.ndim >= 3:  # a stack of grey planes
        flat = arr.reshape(-1, *arr.shape[-2:])
        return [flat[i] for i in range(flat.shape[0])]
    raise InputError(f"{name}: expected a 2-D image, got shape {arr.shape}")


# --------------------------------------------------------------------------- degradation
def degrade(hr: np.ndarray, spec: dict, rng=None) -> np.ndarray:
    """Make the LR image of ``hr`` (H, W) or (H, W, 3) with degradation ``spec``.

    * ``{"kind": "matlab-bicubic", "scale": s}``: MATLAB ``imresize(hr,
      1/s)`` on the raw values (integers rounded as MATLAB); papers 000 §3.1,
      004 §4.
    * ``{"kind": "widefield", "scale": s, "pixel_size": nm, "wavelength": nm,
      "na": ..., "hr_gain": 2, "photons": ..., "background": ..., "read_noise":
      ...}``: ``hr`` is taken as a target seen with ``hr_gain`` times the
      wide-field resolution; a Gaussian blur of σ = √(σ_wf² − σ_hr²) (σ =
      0.21 λ/NA) brings it to wide field, ``s × s`` binning, Poisson + Gaussian
      noise. Returns float32 ``(counts − background) / photons`` (about [0, 1]).
    """
    from napari_resolve.data.degrade import imresize

    kind = (spec or {}).get("kind", "matlab-bicubic")
    scale = int(spec.get("scale", 0) or 0)
    if scale < 1:
        raise InputError(f"degradation {spec!r} needs a positive integer 'scale'")
    if kind == "matlab-bicubic":
        return imresize(hr, 1.0 / scale, channel_axis=-1 if hr.ndim == 3 else None)
    if kind == "widefield":
        from scipy import ndimage

        from napari_resolve.data import fluorescence as fl

        if hr.ndim != 2:
            raise InputError("wide-field degradation needs a single-channel image")
        px = float(spec.get("pixel_size", 31.3))
        wl, na = float(spec.get("wavelength", 520.0)), float(spec.get("na", 1.3))
        gain = float(spec.get("hr_gain", 2.0) or 1.0)
        sigma_wf = 0.21 * wl / na / px
        sigma = sigma_wf * math.sqrt(max(0.0, 1.0 - 1.0 / gain**2))
        img = np.clip(np.asarray(hr, dtype=np.float64), 0.0, None)
        img = img / max(float(img.max()), 1e-12)
        blurred = ndimage.gaussian_filter(img, sigma, mode="reflect") if sigma > 0 else img
        photons = float(spec.get("photons", 200.0))
        background = float(spec.get("background", 10.0))
        counts = fl.camera(
            blurred, scale, photons, background, float(spec.get("read_noise", 2.0)), rng
        )
        return ((counts - background) / photons).astype(np.float32)
    raise InputError(f"unknown degradation kind {kind!r}; use 'matlab-bicubic' or 'widefield'")


# --------------------------------------------------------------------------- items
@dataclass
class _Item:
    """One training image: sources (arrays or paths) and, once loaded, normalised arrays."""

    name: str
    hr: object
    lr: object = None
    labels: object = None
    mr: object = None  # PathSRGAN's medium-resolution target (a real 10× scan), optional


_STACK_SUFFIXES = (".tif", ".tiff", ".mrc", ".npy")


def _split_stacks(items: list[_Item]) -> list[_Item]:
    """HR-only files holding a stack (Z, T or raw frames) give one item per plane."""
    out = []
    for it in items:
        src = it.hr
        if it.lr is None and it.labels is None and it.mr is None and isinstance(src, (str, Path)):
            if Path(src).suffix.lower() in _STACK_SUFFIXES:
                planes = _planes(read_image(src), it.name)
                if len(planes) > 1:
                    out.extend(_Item(f"{it.name}[{i}]", p) for i, p in enumerate(planes))
                    continue
        out.append(it)
    return out


def _as_items(hr, lr=None, labels=None, mr=None) -> list[_Item]:
    """Pair HR sources with optional LR, label and MR sources (files by name, else by order)."""
    hr = _expand(hr, "hr")
    parts = {}
    for key, src, what in (("lr", lr, "LR"), ("labels", labels, "label"), ("mr", mr, "MR")):
        if src is None:
            continue
        other = _expand(src, key)
        if all(isinstance(p, (str, Path)) for p in [*hr, *other]):
            other = _match_by_name(hr, other, what)
        elif len(other) != len(hr):
            raise InputError(f"{len(hr)} HR images but {len(other)} {what} images")
        parts[key] = other
    items = []
    for i, src in enumerate(hr):
        name = Path(src).name if isinstance(src, (str, Path)) else f"image {i}"
        items.append(
            _Item(name, src, *(parts[k][i] if k in parts else None for k in ("lr", "labels", "mr")))
        )
    return items


def _expand(src, what: str) -> list:
    """A folder, glob, path, array, stack or list of these -> a flat list of sources."""
    if isinstance(src, np.ndarray) or torch.is_tensor(src) or hasattr(src, "compute"):
        arr = np.asarray(src)
        if arr.ndim == 4 and arr.shape[-1] in (3, 4):  # a stack of RGB images
            return [a[..., :3] for a in arr]
        return _planes(arr, what)
    if isinstance(src, (str, Path)):
        path = Path(src).expanduser()
        if path.is_dir():
            files = sorted(
                p for p in path.iterdir() if p.is_file() and p.suffix.lower() in _suffixes()
            )
            if not files:
                raise InputError(f"no images ({', '.join(IMAGE_SUFFIXES)}, ...) in folder {path}")
            return files
        if any(ch in str(src) for ch in "*?["):
            files = sorted(
                Path(p) for p in glob.glob(str(path)) if Path(p).suffix.lower() in _suffixes()
            )
            if not files:
                raise InputError(f"no images match {src}")
            return files
        if not path.exists():
            raise InputError(f"{what} not found: {path}")
        return [path]
    if isinstance(src, (list, tuple)):
        out = []
        for s in src:
            out.extend(
                _expand(s, what) if isinstance(s, (str, Path)) and not Path(s).is_file() else [s]
            )
        if not out:
            raise InputError(f"no {what} images given")
        return out
    raise InputError(f"cannot use {type(src).__name__} as {what} images")


def _match_by_name(hr: list, other: list, what: str) -> list:
    if not all(isinstance(p, (str, Path)) for p in [*hr, *other]):
        raise InputError(f"{len(hr)} HR images but {len(other)} {what} images")
    by_stem = {Path(p).stem: p for p in other}
    out = []
    for p in hr:
        if Path(p).stem not in by_stem:
            raise InputError(f"no {what} image named like {Path(p).name}")
        out.append(by_stem[Path(p).stem])
    return out


def describe(data) -> str:
    """One line describing a data source for the bundle metadata."""
    if isinstance(data, SRDataset):
        return data.description
    if isinstance(data, (str, Path)):
        return str(data)
    if isinstance(data, dict):
        return ", ".join(f"{k}: {describe(v)}" for k, v in data.items() if v is not None)
    if isinstance(data, (list, tuple)):
        if data and all(isinstance(d, (str, Path)) for d in data):
            return f"{len(data)} files in {Path(data[0]).parent}"
        return f"{len(data)} images in memory"
    if isinstance(data, np.ndarray):
        return f"array {data.shape} {data.dtype}"
    return type(data).__name__


# --------------------------------------------------------------------------- dataset
class SRDataset(torch.utils.data.Dataset):
    """(LR, HR[, labels]) samples; see the module docstring.

    Parameters
    ----------
    items : list of _Item (use :func:`make_dataset`)
    scale : int
    in_channels : 1 or 3
        1: grey images as they are, RGB images as the Y of YCbCr; 3: RGB.
    normalization : dict, the bundle's ``normalization``
    degradation : dict for HR-only items (see :func:`degrade`)
    patch_size : int or None
        HR patch side (rounded down to a multiple of ``scale``); None for whole images.
    patches_per_image : int
        Samples per image and epoch (the epoch length is ``len(items) * patches_per_image``).
    augment : bool
        Random flips and 90° rotations (the 8 symmetries of the square).
    seed : int
    """

    def __init__(
        self,
        items,
        *,
        scale,
        in_channels=1,
        normalization=None,
        degradation=None,
        patch_size=None,
        patches_per_image=1,
        augment=True,
        seed=0,
        description="",
    ):
        super().__init__()
        if not items:
            raise InputError("no training images")
        self.items = list(items)
        self.scale = int(scale)
        self.in_channels = int(in_channels)
        if self.in_channels not in (1, 3):
            raise InputError(f"training supports 1 or 3 channels, got {in_channels}")
        self.normalization = normalization or {"mode": "dtype"}
        self.degradation = dict(degradation or {"kind": "matlab-bicubic"})
        self.degradation["scale"] = self.scale
        if patch_size is not None:
            patch_size = int(patch_size) // self.scale * self.scale
            if patch_size < self.scale * 4:
                raise InputError(
                    f"patch size must be at least {self.scale * 4} HR px for x{self.scale}"
                )
        self.patch_size = patch_size
        self.patches_per_image = max(1, int(patches_per_image))
        self.augment = bool(augment)
        self.seed = int(seed)
        self.epoch = 0
        self.description = description or f"{len(self.items)} images"
        self._cache: dict[int, dict] = {}
        self._noisy = self.degradation.get("kind") == "widefield"
        self.has_labels = any(it.labels is not None for it in self.items)
        self.has_lr = any(it.lr is not None for it in self.items)

    # ---- public helpers
    def __len__(self) -> int:
        return len(self.items) * self.patches_per_image

    def set_epoch(self, epoch: int) -> None:
        """Reseed augmentation and degradation noise for ``epoch`` (as DistributedSampler)."""
        self.epoch = int(epoch)

    def subset(self, indices, *, patch_size="same", augment=None, patches_per_image=None):
        """A dataset over ``items[indices]`` sharing settings (and the loaded-image cache)."""
        ds = SRDataset.__new__(SRDataset)
        ds.__dict__.update(self.__dict__)
        ds.items = [self.items[i] for i in indices]
        ds._cache = {j: self._cache[i] for j, i in enumerate(indices) if i in self._cache}
        if patch_size != "same":
            ds.patch_size = patch_size
        if augment is not None:
            ds.augment = augment
        if patches_per_image is not None:
            ds.patches_per_image = patches_per_image
        ds.has_labels = any(it.labels is not None for it in ds.items)
        return ds

    def split(
        self, val_fraction: float = 0.1, seed: int | None = None, val_patch: int | None = 256
    ):
        """(train, val) split by image.

        Validation keeps whole images (centre crop ≤ ``val_patch``), no augmentation.
        """
        n = len(self.items)
        if n < 2:
            # one image: validate on its centre, train on all of it
            return self, self.subset([0], patch_size=None, augment=False, patches_per_image=1)._val(
                val_patch
            )
        n_val = min(n - 1, max(1, int(round(n * float(val_fraction)))))
        order = np.random.default_rng([self.seed if seed is None else seed, 7919]).permutation(n)
        val_idx, train_idx = sorted(order[:n_val].tolist()), sorted(order[n_val:].tolist())
        val = self.subset(val_idx, patch_size=None, augment=False, patches_per_image=1)._val(
            val_patch
        )
        return self.subset(train_idx), val

    def as_validation(self, val_patch: int | None = 256):
        return self.subset(
            range(len(self.items)), patch_size=None, augment=False, patches_per_image=1
        )._val(val_patch)

    def _val(self, val_patch):
        self.val_patch = None if val_patch is None else int(val_patch) // self.scale * self.scale
        return self

    # ---- loading
    def _load(self, idx: int) -> dict:
        if idx in self._cache:
            return self._cache[idx]
        from napari_resolve.data.normalize import Normalizer

        item = self.items[idx]
        s = self.scale
        hr_raw = self._array(item.hr, item.name)
        hr_raw = hr_raw[: hr_raw.shape[0] // s * s, : hr_raw.shape[1] // s * s]
        if hr_raw.shape[0] < 2 * s or hr_raw.shape[1] < 2 * s:
            raise InputError(f"{item.name}: image {hr_raw.shape[:2]} too small for x{s}")
        entry = {"name": item.name, "rgb": hr_raw.ndim == 3}
        norm = Normalizer.from_meta(self.normalization)
        if item.lr is not None:
            lr_raw = self._array(item.lr, f"LR of {item.name}")
            h, w = hr_raw.shape[0] // s, hr_raw.shape[1] // s
            if (
                lr_raw.shape[0] < h
                or lr_raw.shape[1] < w
                or lr_raw.shape[0] > h + 1
                or lr_raw.shape[1] > w + 1
            ):
                raise InputError(
                    f"{item.name}: LR {lr_raw.shape[:2]} x {s} does not match HR {hr_raw.shape[:2]}"
                )
            lr_raw = lr_raw[:h, :w]
            entry["lr"] = self._channels(norm.fit(lr_raw).forward(self._color(lr_raw, item.name)))
        elif not self._noisy:
            lr_raw = degrade(hr_raw, self.degradation)
            entry["lr"] = self._channels(norm.fit(lr_raw).forward(self._color(lr_raw, item.name)))
        hr = self._color(hr_raw, item.name)
        entry["hr"] = self._channels(norm.fit(hr).forward(hr))
        if item.mr is not None:
            mr_raw = self._array(item.mr, f"MR of {item.name}")
            ratio = mr_raw.shape[0] * s // hr_raw.shape[0]
            if ratio < 1 or s % ratio or mr_raw.shape[0] < hr_raw.shape[0] * ratio // s:
                raise InputError(
                    f"{item.name}: MR {mr_raw.shape[:2]} is not HR {hr_raw.shape[:2]} / integer"
                )
            mh, mw = hr_raw.shape[0] * ratio // s, hr_raw.shape[1] * ratio // s
            mr_raw = self._color(mr_raw[:mh, :mw], item.name)
            entry["mr"] = self._channels(norm.fit(mr_raw).forward(mr_raw))
            entry["mr_ratio"] = ratio
        if item.labels is not None:
            lab = read_labels(item.labels, f"labels of {item.name}")
            if lab.shape[0] < hr.shape[0] or lab.shape[1] < hr.shape[1]:
                raise InputError(
                    f"{item.name}: labels {lab.shape} smaller than the image {hr.shape[:2]}"
                )
            entry["labels"] = lab[: hr.shape[0], : hr.shape[1]]
        self._cache[idx] = entry
        return entry

    def _array(self, src, name):
        arr = read_image(src) if isinstance(src, (str, Path)) else np.asarray(src)
        planes = _planes(arr, name)
        if len(planes) != 1:
            raise InputError(
                f"{name}: a stack of {len(planes)} planes; pass the planes as separate images"
            )
        arr = planes[0]
        if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
            raise InputError(f"{name}: not a numeric image (dtype {arr.dtype})")
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            raise InputError(f"{name} contains NaN or infinite values")
        return arr

    def _color(self, arr, name):
        rgb = arr.ndim == 3
        if self.in_channels == 1 and rgb:
            from napari_resolve.data.color import rgb_to_y

            if arr.dtype not in (np.uint8, np.uint16) and not np.issubdtype(arr.dtype, np.floating):
                arr = arr.astype(np.float64) / max(float(arr.max()), 1.0)
            return rgb_to_y(arr)
        if self.in_channels == 3 and not rgb:
            raise InputError(f"{name} is greyscale but the model wants RGB (3 channels)")
        return arr

    @staticmethod
    def _channels(arr) -> np.ndarray:
        arr = np.asarray(arr, dtype=np.float32)
        return arr[None] if arr.ndim == 2 else np.ascontiguousarray(np.moveaxis(arr, -1, 0))

    # ---- sampling
    def __getitem__(self, i: int) -> dict:
        n = len(self.items)
        idx = int(i) % n
        rng = np.random.default_rng([self.seed, self.epoch, int(i)])
        entry = self._load(idx)
        hr = entry["hr"]
        s = self.scale
        H, W = hr.shape[-2:]
        lab = entry.get("labels")
        lr = entry.get("lr")
        mr, r = entry.get("mr"), entry.get("mr_ratio", 1)
        if lr is None:  # noisy degradation: a fresh noise draw per sample
            lr = self._noisy_lr(idx, rng)
        ps = self.patch_size
        if ps is None and getattr(self, "val_patch", None):
            ps = min(self.val_patch, H, W) // s * s
            y0, x0 = (H - ps) // 2 // s, (W - ps) // 2 // s
        elif ps is not None:
            if ps > H or ps > W:
                raise InputError(
                    f"{entry['name']}: image {H}x{W} is smaller than the patch size {ps}"
                )
            y0, x0 = self._pick(hr, ps, rng)
        if ps is not None:
            ph = ps // s
            hr = hr[:, y0 * s : y0 * s + ps, x0 * s : x0 * s + ps]
            lr = lr[:, y0 : y0 + ph, x0 : x0 + ph]
            if mr is not None:
                mr = mr[:, y0 * r : (y0 + ph) * r, x0 * r : (x0 + ph) * r]
            if lab is not None:
                lab = lab[y0 * s : y0 * s + ps, x0 * s : x0 * s + ps]
        if self.augment:
            k, flip = int(rng.integers(4)), bool(rng.integers(2))
            hr, lr = _sym(hr, k, flip), _sym(lr, k, flip)
            mr = None if mr is None else _sym(mr, k, flip)
            if lab is not None:
                lab = _sym(lab[None], k, flip)[0]
        if lab is None:
            lab = np.full(hr.shape[-2:], -1, dtype=np.int64)
        out = {
            "lr": torch.from_numpy(np.ascontiguousarray(lr, dtype=np.float32)),
            "hr": torch.from_numpy(np.ascontiguousarray(hr, dtype=np.float32)),
            "labels": torch.from_numpy(np.ascontiguousarray(lab, dtype=np.int64)),
            "index": idx,
        }
        if mr is not None:
            out["mr"] = torch.from_numpy(np.ascontiguousarray(mr, dtype=np.float32))
        return out

    def _noisy_lr(self, idx, rng):
        from napari_resolve.data.normalize import Normalizer

        entry = self._cache[idx]
        lr = degrade(entry["hr"][0], self.degradation, rng)
        if self.normalization.get("mode") == "percentile":
            lr = Normalizer.from_meta(self.normalization).fit(lr).forward(lr)
        return lr[None].astype(np.float32)

    def _pick(self, hr, ps, rng):
        s = self.scale
        H, W = hr.shape[-2:]
        ny, nx = (H - ps) // s + 1, (W - ps) // s + 1
        std = float(hr.std())
        for _ in range(10):
            y0, x0 = int(rng.integers(ny)), int(rng.integers(nx))
            if float(hr[:, y0 * s : y0 * s + ps, x0 * s : x0 * s + ps].std()) >= 0.5 * std:
                break
        return y0, x0


def _sym(a: np.ndarray, k: int, flip: bool) -> np.ndarray:
    a = np.rot90(a, k, axes=(-2, -1))
    return a[..., ::-1] if flip else a


def collate(samples: list[dict]) -> dict:
    """Stack samples; whole images of different sizes are centre-cropped to the smallest.

    The crop keeps the LR grid (HR offsets are multiples of the scale), so
    LR and HR stay aligned. Paper 000 trains on whole images in batches of
    8 without saying how sizes are matched; WBC crops are nearly square and
    centred on the cell, so a centre crop keeps the cell.
    """
    hs = min(s["lr"].shape[-2] for s in samples)
    ws = min(s["lr"].shape[-1] for s in samples)
    with_mr = all("mr" in smp for smp in samples)
    out = {"lr": [], "hr": [], "labels": [], "index": [], "mr": []}
    for smp in samples:
        lr, hr, lab = smp["lr"], smp["hr"], smp["labels"]
        sc = hr.shape[-1] // lr.shape[-1]
        y0, x0 = (lr.shape[-2] - hs) // 2, (lr.shape[-1] - ws) // 2
        out["lr"].append(lr[:, y0 : y0 + hs, x0 : x0 + ws])
        out["hr"].append(hr[:, y0 * sc : (y0 + hs) * sc, x0 * sc : (x0 + ws) * sc])
        out["labels"].append(lab[y0 * sc : (y0 + hs) * sc, x0 * sc : (x0 + ws) * sc])
        out["index"].append(smp["index"])
        if with_mr:
            r = smp["mr"].shape[-1] // lr.shape[-1]
            out["mr"].append(smp["mr"][:, y0 * r : (y0 + hs) * r, x0 * r : (x0 + ws) * r])
    batch = {
        "lr": torch.stack(out["lr"]),
        "hr": torch.stack(out["hr"]),
        "labels": torch.stack(out["labels"]),
        "index": torch.as_tensor(out["index"]),
    }
    if with_mr:
        batch["mr"] = torch.stack(out["mr"])
    return batch


# --------------------------------------------------------------------------- factory
def make_dataset(
    data=None,
    *,
    hr=None,
    lr=None,
    labels=None,
    mr=None,
    scale: int,
    in_channels: int = 1,
    normalization=None,
    degradation=None,
    patch_size=None,
    patches_per_image: int = 1,
    augment: bool = True,
    seed: int = 0,
) -> SRDataset:
    """Build an :class:`SRDataset` from folders, globs, files or arrays.

    ``data`` may be: an :class:`SRDataset` (returned as is); a folder holding
    ``HR/`` and ``LR/`` (and optionally ``labels/``) sub-folders; a folder,
    glob or list of HR images; an array or list of arrays (HR only); a dict
    with ``hr``, ``lr``, ``labels``, ``mr``; or a list of
    :class:`~napari_resolve.data.fluorescence.FluorescenceSample`. ``hr=``,
    ``lr=``, ``labels=``, ``mr=`` give the parts separately. A pairs folder of
    :func:`napari_resolve.data.registration.write_pairs` (``lr/``, ``mr/``,
    ``hr/``) gives PathSRGAN its real medium-resolution targets.
    """
    if isinstance(data, SRDataset):
        return data
    desc = ""
    if data is not None:
        if isinstance(data, dict):
            hr, lr = data.get("hr", hr), data.get("lr", lr)
            labels, mr = data.get("labels", labels), data.get("mr", mr)
        elif isinstance(data, (list, tuple)) and data and all(_is_simulated(d) for d in data):
            hr, lr = [d.hr for d in data], [d.lr for d in data]
            desc = f"{len(data)} simulated fluorescence pairs"
            normalization = normalization or {"mode": "percentile", "low": 1.0, "high": 99.8}
        elif isinstance(data, (str, Path)) and Path(data).is_dir() and _sub(Path(data), "hr"):
            root = Path(data)
            hr, lr, mr = _sub(root, "hr"), _sub(root, "lr"), _sub(root, "mr")
            labels = _sub(root, "labels") or _sub(root, "masks")
        else:
            hr = data
        desc = desc or describe(data)
    if hr is None:
        raise InputError("no training data: give a folder, HR images or arrays")
    items = _split_stacks(_as_items(hr, lr, labels, mr))
    return SRDataset(
        items,
        scale=scale,
        in_channels=in_channels,
        normalization=normalization,
        degradation=degradation,
        patch_size=patch_size,
        patches_per_image=patches_per_image,
        augment=augment,
        seed=seed,
        description=desc or describe(hr),
    )


def _is_simulated(obj) -> bool:
    # duck-typed FluorescenceSample: importing the simulator is not needed to recognise one
    return all(hasattr(obj, a) for a in ("hr", "lr", "hr_pixel_size", "lr_pixel_size"))


def _sub(root: Path, name: str):
    for child in root.iterdir():
        if child.is_dir() and child.name.lower() == name:
            return child
    return None
