"""napari sample data (File ▸ Open Sample ▸ napari-resolve): small real images, no model run.

* **Leukocyte**: a neutrophil of the WBC data set of Zheng et al. 2018
  (dataset 2, image 064, 300×300 RGB) as the high-resolution (HR) image, its
  low-resolution (LR) version made as in paper 000 §3.1 (MATLAB
  ``imresize(HR, 1/4, 'bicubic')``, :func:`napari_resolve.data.degrade.imresize`)
  and the parsing mask (0 background, 1 cytoplasm, 2 nucleus). The LR layer is
  placed so that it covers the HR field exactly (the inverse of the SR
  geometry), so an SR result of the LR layer lies on the HR image.
* **Blood smear**: one BCCD smear, 640×480 RGB.
* **Two-photon field**: BPAE cells, one raw (diffraction-limited) frame, the
  frame average and the SRRF reconstruction (hidden), 256×256 uint16, same grid.

The pixel sizes of these sources are not published, so layers are in pixels.
Sources and licences: ``sample_data/README.md``; each layer's ``metadata``
holds its source, licence and citation.
"""

from __future__ import annotations

from napari_resolve.napari._jobs import lr_geometry

LEUKOCYTE = (2, 64)  # (dataset, id): a neutrophil, whose lobed nucleus is what paper 000 cares for
SCALE = 4


def _about(meta) -> dict:
    return {"sample": meta.to_dict()}


def leukocyte():
    """LR (MATLAB bicubic ×1/4), HR and parsing mask of one white blood cell."""
    from napari_resolve.data import samples
    from napari_resolve.data.degrade import imresize
    from napari_resolve.napari._style import parsing_style

    dataset, ident = LEUKOCYTE
    (hr, labels, meta), = samples.wbc(dataset, ids=[ident])
    lr = imresize(hr, 1.0 / SCALE, channel_axis=-1)
    lr_scale, lr_translate = lr_geometry((1.0, 1.0), (0.0, 0.0), SCALE)
    about = _about(meta)
    # layer order: the mask last, so that it lies above the opaque LR layer when switched on
    return [
        (hr, {"name": "leukocyte (HR)", "rgb": True, "visible": False, "metadata": about}, "image"),
        (lr, {"name": "leukocyte (LR)", "rgb": True, "scale": lr_scale, "translate": lr_translate,
              "metadata": {**about, "degradation": {"kind": "matlab-bicubic", "scale": SCALE}}},
         "image"),
        # on the x4 grid of the LR layer: usable as its prior ("Re-run with edited parsing map")
        (labels, {"name": "leukocyte mask (HR)", "visible": False,
                  "metadata": {**about, "napari_resolve": {"source_layer": "leukocyte (LR)",
                                                           "kind": "parsing", "plane": None}},
                  **parsing_style()}, "labels"),
    ]


def blood_smear():
    """A 640×480 RGB blood smear (BCCD)."""
    from napari_resolve.data import samples

    image, meta = samples.bccd_smear()
    return [(image, {"name": "blood smear", "rgb": True, "metadata": _about(meta)}, "image")]


def twophoton():
    """Two-photon fluorescence of BPAE cells: raw frame, frame average, SRRF (256×256 uint16)."""
    from napari_resolve.data import samples

    raw, avg, srrf, meta = samples.twophoton("bpae")
    about = _about(meta)
    common = {"colormap": "magma", "metadata": about}
    return [
        (srrf, {"name": "two-photon SRRF", "visible": False, **common}, "image"),
        (avg, {"name": "two-photon average", "visible": False, **common}, "image"),
        (raw, {"name": "two-photon raw frame", **common}, "image"),
    ]
