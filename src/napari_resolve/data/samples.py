"""Loaders for the real sample data (``sample_data/``) and the full data sets.

Every loader returns NumPy arrays plus a :class:`SampleMeta` (pixel size in
µm or ``None`` when unknown, source, licence, citation, file path, extras).
``root=`` points a loader at another copy of its source folder, e.g. the full
``shared/data/wbc-zheng2018`` for training (the folder itself or its parent
both work). Without ``root`` the loaders read the repository's
``sample_data/``; the environment variable ``NAPARI_RESOLVE_SAMPLE_DATA``
overrides that location (for an installed wheel, which does not ship it).

Sources and licences are in each folder's ``SOURCE.md`` (see
``sample_data/README.md``).
"""

from __future__ import annotations

import csv
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from napari_resolve.errors import InputError

__all__ = [
    "SampleMeta",
    "TwoPhoton",
    "sample_root",
    "wbc",
    "wbc_ids",
    "wbc_train_val",
    "bccd_smear",
    "bccd_names",
    "twophoton",
    "mt_widefield",
    "ihc",
    "WBC_CLASSES",
]

ENV_VAR = "NAPARI_RESOLVE_SAMPLE_DATA"
#: class labels of the WBC data set (its class_labels.csv)
WBC_CLASSES = {1: "neutrophil", 2: "lymphocyte", 3: "monocyte", 4: "eosinophil", 5: "basophil"}
#: pixel size of MT.mrc (header cell / grid), rDL-SIM
MT_PIXEL_SIZE_UM = 0.0626


@dataclass(frozen=True)
class SampleMeta:
    """Where an image comes from and how big its pixels are."""

    name: str
    pixel_size: float | None  # µm; None when the source does not say
    source: str
    licence: str
    citation: str
    path: str = ""
    unit: str = "µm"
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


class TwoPhoton(NamedTuple):
    raw: np.ndarray
    avg: np.ndarray
    srrf: np.ndarray
    meta: SampleMeta


_SOURCES = {
    "wbc-zheng2018": dict(
        source="https://github.com/zxaoyou/segmentation_WBC (Zheng et al. 2018)",
        licence="GPL-3.0",
        citation="Zheng X, Wang Y, Wang G, Liu J. Fast and robust segmentation of white blood "
        "cell images by self-supervised learning. Micron 107:55-71 (2018). "
        "doi:10.1016/j.micron.2018.01.010",
    ),
    "bccd": dict(
        source="https://github.com/Shenggan/BCCD_Dataset",
        licence="MIT",
        citation="Shenggan, BCCD Dataset, GitHub (2017); data from cosmicad/dataset and "
        "akshaylamba/all_CELL_data",
    ),
    "nd-twophoton-srrf": dict(
        source="https://github.com/ND-HowardGroup/Application-Specific-Super-resolution",
        licence="GPL-3.0",
        citation="Mannam V. Super-Resolution (SR) Fluorescence Microscopy Dataset. University "
        "of Notre Dame (2021). https://curate.nd.edu/show/5h73pv66g4s",
    ),
    "rdl-sim-microtubules-raw": dict(
        source="https://github.com/qc17-THU/rDL-SIM (data_test/rDL-SIM/Microtubules/MT.mrc)",
        licence="MIT",
        citation="Qiao C, Li D, Liu Y, et al. Rationalized deep neural network for sustained "
        "super-resolution live imaging of rapid subcellular processes. Nat Biotechnol (2022). "
        "doi:10.1038/s41587-022-01471-3",
    ),
    "skimage-ihc": dict(
        source="scikit-image sample data (skimage/data/ihc.png)",
        licence="BSD-3-Clause (no known copyright restrictions)",
        citation="van der Walt S, et al. scikit-image: image processing in Python. PeerJ 2:e453 "
        "(2014). doi:10.7717/peerj.453",
    ),
}


def sample_root() -> Path:
    """The ``sample_data`` folder: ``$NAPARI_RESOLVE_SAMPLE_DATA`` or the repository's."""
    env = os.environ.get(ENV_VAR)
    if env:
        root = Path(env).expanduser()
        if not root.is_dir():
            raise InputError(f"{ENV_VAR}={env} is not a folder")
        return root
    # a wheel ships it inside the package (pyproject force-include); a source
    # checkout has it at the repository root
    here = Path(__file__).resolve()
    root = here.parents[1] / "sample_data"
    if not root.is_dir():
        root = here.parents[3] / "sample_data"
    if not root.is_dir():
        raise InputError(
            "sample data not found (an installed package does not include it); pass root= "
            f"or set {ENV_VAR} to a copy of the repository's sample_data folder"
        )
    return root


def _folder(name: str, root) -> Path:
    """The source folder ``name``: ``root`` itself, ``root/name``, or the default sample_data."""
    if root is None:
        folder = sample_root() / name
    else:
        root = Path(root).expanduser()
        folder = root / name if (root / name).is_dir() else root
    if not folder.is_dir():
        raise InputError(f"data folder not found: {folder}")
    return folder


def _meta(folder_name: str, name: str, path: Path, pixel_size=None, **extra) -> SampleMeta:
    return SampleMeta(name=name, pixel_size=pixel_size, path=str(path), extra=extra,
                      **_SOURCES[folder_name])


def _read(path: Path) -> np.ndarray:
    from napari_resolve.io import read_image

    return read_image(path)[0]


# --- white blood cells (Zheng et al. 2018) -----------------------------------


def _wbc_dir(dataset, root) -> Path:
    if dataset not in (1, 2):
        raise InputError(f"WBC dataset must be 1 or 2, got {dataset!r}")
    folder = _folder("wbc-zheng2018", root) / f"dataset{dataset}"
    if not (folder / "images").is_dir():
        raise InputError(f"WBC dataset{dataset} not found under {folder.parent}")
    return folder


def wbc_ids(dataset: int = 1, *, root=None) -> list[int]:
    """IDs of the WBC images present (the sample holds 12 of each set)."""
    folder = _wbc_dir(dataset, root)
    return sorted(int(p.stem) for p in (folder / "images").glob("*.bmp") if p.stem.isdigit())


def _wbc_classes(folder: Path) -> dict[int, int]:
    path = folder / "class_labels.csv"
    if not path.is_file():
        return {}
    out = {}
    with open(path, newline="", encoding="utf-8-sig") as fh:
        for row in csv.reader(fh):
            if len(row) >= 2 and row[0].strip().isdigit() and row[1].strip().isdigit():
                out[int(row[0])] = int(row[1])
    return out


def wbc(dataset: int = 1, ids=None, *, root=None) -> list[tuple[np.ndarray, np.ndarray, SampleMeta]]:
    """White-blood-cell images with their parsing maps.

    Returns a list of ``(image, labels, meta)``: image RGB uint8 (H, W, 3),
    labels uint8 0 background / 1 cytoplasm / 2 nucleus (from the 0/128/255
    masks, stray values to the nearest), ``meta.extra`` = ``{"id", "dataset",
    "cell_class"}`` (cell type from class_labels.csv, or None).

    Parameters
    ----------
    dataset : 1 or 2
        1: 300 crops of 88-120 px (Jiangxi Tecom); 2: 300 x 300 crops (CellaVision).
    ids : iterable of int, optional
        Image numbers (the files' names); default all present.
    root : path, optional
        Folder ``wbc-zheng2018`` (or its parent); default the sample data.
    """
    from napari_resolve.data.labels import mask_to_labels

    folder = _wbc_dir(dataset, root)
    present = wbc_ids(dataset, root=root)
    if ids is None:
        wanted = present
    else:
        try:
            wanted = [int(i) for i in ([ids] if isinstance(ids, (int, str)) else ids)]
        except (TypeError, ValueError):
            raise InputError(f"WBC ids must be integers, got {ids!r}") from None
        missing = sorted(set(wanted) - set(present))
        if missing:
            raise InputError(
                f"WBC dataset{dataset} has no image(s) {missing} in {folder} "
                f"({len(present)} present, e.g. {present[:5]})"
            )
    classes = _wbc_classes(folder)
    out = []
    for i in wanted:
        img_path = folder / "images" / f"{i:03d}.bmp"
        mask_path = folder / "masks" / f"{i:03d}.png"
        image = _read(img_path)
        if not mask_path.is_file():
            raise InputError(f"mask missing for WBC image {img_path.name}: {mask_path}")
        labels = mask_to_labels(_read(mask_path))
        if image.ndim != 3 or image.shape[2] != 3 or image.shape[:2] != labels.shape:
            raise InputError(f"WBC image {img_path} {image.shape} does not match its mask {labels.shape}")
        cls = classes.get(i)
        meta = _meta("wbc-zheng2018", f"wbc{dataset}-{i:03d}", img_path, id=i, dataset=dataset,
                     cell_class=WBC_CLASSES.get(cls))
        out.append((image, labels, meta))
    return out


# --- BCCD blood smear --------------------------------------------------------


def bccd_names(*, root=None) -> list[str]:
    """Names (file stems) of the BCCD smears present."""
    folder = _folder("bccd", root)
    return sorted(p.stem for p in (folder / "JPEGImages").glob("*.jpg"))


def _voc_boxes(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    try:
        tree = ET.parse(path)
    except ET.ParseError as exc:
        raise InputError(f"{path.name} is not a readable VOC annotation: {exc}") from None
    boxes = []
    for obj in tree.getroot().iter("object"):
        box = obj.find("bndbox")
        if box is None:
            continue
        coords = {k: float(box.findtext(k, "nan")) for k in ("xmin", "ymin", "xmax", "ymax")}
        boxes.append({"name": obj.findtext("name", "").strip(), **coords})
    return boxes


def bccd_smear(name: str = "BloodImage_00000", *, root=None) -> tuple[np.ndarray, SampleMeta]:
    """A 640 x 480 RGB blood smear (JPEG) with its VOC boxes in ``meta.extra["boxes"]``.

    Boxes are dicts ``name`` (WBC / RBC / Platelets), ``xmin``, ``ymin``,
    ``xmax``, ``ymax`` in pixels (VOC, 1-based as in the files).
    """
    folder = _folder("bccd", root)
    stem = re.sub(r"\.jpe?g$", "", str(name), flags=re.IGNORECASE)
    if not re.fullmatch(r"[\w\-]+", stem):  # a name, not a path
        raise InputError(f"invalid BCCD image name {name!r}")
    path = folder / "JPEGImages" / f"{stem}.jpg"
    if not path.is_file():
        raise InputError(f"BCCD image {stem} not found in {folder / 'JPEGImages'}")
    boxes = _voc_boxes(folder / "Annotations" / f"{stem}.xml")
    return _read(path), _meta("bccd", stem, path, boxes=boxes)


# --- two-photon raw / average / SRRF (Notre Dame) ----------------------------

_TWOPHOTON = {"bpae": "bpae_fov08", "mouse_kidney": "mouse_kidney_fov01"}


def _pick(files: list[Path], rule, what: str, folder: Path) -> Path:
    hits = [p for p in files if rule(p.stem.lower())]
    if len(hits) != 1:
        raise InputError(f"expected one {what} TIFF in {folder}, found {len(hits)}")
    return hits[0]


def twophoton(name: str = "bpae", *, root=None) -> TwoPhoton:
    """Two-photon pair on one grid: ``(raw, avg, srrf, meta)``, 256 x 256 uint16 each.

    ``name``: ``"bpae"`` (BPAE cells, FOV 8) or ``"mouse_kidney"`` (FOV 1),
    or the folder names ``bpae_fov08`` / ``mouse_kidney_fov01``. ``raw`` is one
    diffraction-limited frame, ``avg`` the frame average, ``srrf`` the SRRF
    reconstruction (a computational target, not optical ground truth). The
    pixel size is not published with the files (``None``).
    """
    key = str(name).lower()
    sub = _TWOPHOTON.get(key, key if key in _TWOPHOTON.values() else None)
    if sub is None:
        raise InputError(f"unknown two-photon sample {name!r}; use one of {', '.join(_TWOPHOTON)}")
    base = _folder("nd-twophoton-srrf", root)
    folder = base / sub if (base / sub).is_dir() else base
    files = sorted(folder.glob("*.tif"))
    if not files:
        raise InputError(f"no two-photon TIFFs in {folder}")
    srrf = _pick(files, lambda s: s.endswith("_srrf"), "SRRF", folder)
    avg = _pick(files, lambda s: "_avg" in s, "average", folder)
    raw = _pick(files, lambda s: re.search(r"_t0?1$", s) and not re.search("_(avg|max)", s),
                "raw-frame", folder)
    arrays = [_read(p) for p in (raw, avg, srrf)]
    meta = _meta("nd-twophoton-srrf", sub, folder, raw=raw.name, avg=avg.name, srrf=srrf.name)
    return TwoPhoton(*arrays, meta)


# --- SIM microtubules (rDL-SIM) and IHC --------------------------------------


def mt_widefield(*, root=None) -> tuple[np.ndarray, SampleMeta]:
    """Wide-field microtubules: the mean of the 9 raw 2D-SIM frames of ``MT.mrc``.

    Float32 (256, 256) on the frames' uint16 intensity scale; averaging the 3
    orientations x 3 phases of the illumination pattern gives uniform
    (wide-field) illumination. Pixel size 62.6 nm (the file's Priism header).
    """
    from napari_resolve.io import read_image

    folder = _folder("rdl-sim-microtubules-raw", root)
    path = folder / "MT.mrc"
    frames, io_meta = read_image(path)
    if frames.ndim != 3 or frames.shape[0] != 9:
        raise InputError(f"{path} should hold 9 SIM frames, got shape {frames.shape}")
    image = frames.astype(np.float64).mean(axis=0).astype(np.float32)
    pixel = io_meta["pixel_size"] or MT_PIXEL_SIZE_UM
    return image, _meta("rdl-sim-microtubules-raw", "MT-widefield", path, pixel_size=pixel,
                        frames=int(frames.shape[0]))


def ihc(*, root=None) -> tuple[np.ndarray, SampleMeta]:
    """512 x 512 RGB uint8 immunohistochemistry (colon, DAB + hematoxylin)."""
    folder = _folder("skimage-ihc", root)
    path = folder / "ihc.png"
    if not path.is_file():
        raise InputError(f"ihc.png not found in {folder}")
    return _read(path), _meta("skimage-ihc", "ihc", path)


def wbc_train_val(*, root=None, min_size: int = 96):
    """The leukocyte training / validation split used for every bundled model.

    Validation: the data-set-2 cells shipped in ``sample_data`` (what
    ``make demo`` and ``benchmarks/leukocyte.py`` evaluate on, so no bundled
    model has seen them). Training: every other cell of both data sets under
    ``root`` (the full ``wbc-zheng2018`` folder) at least ``min_size`` px on
    each side. Returns two dicts ``{"hr": [RGB uint8], "labels": [0/1/2]}``.
    """
    held_out = set(wbc_ids(2))  # the sample_data cells
    train = {"hr": [], "labels": []}
    val = {"hr": [], "labels": []}
    for dataset in (1, 2):
        for img, lab, meta in wbc(dataset, root=root):
            ident = int(Path(meta.path).stem)
            if dataset == 2 and ident in held_out:
                val["hr"].append(img)
                val["labels"].append(lab)
            elif min(img.shape[:2]) >= min_size:
                train["hr"].append(img)
                train["labels"].append(lab)
    if not val["hr"]:
        raise InputError("no validation cells: sample_data/wbc-zheng2018/dataset2 is missing")
    return train, val
