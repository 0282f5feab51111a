"""The datasets of one training run: what :func:`~napari_resolve.train.engine.train_iter` trains and validates on.

Split out of the engine so that the loop stays one idea. The validation set
is ``val_data`` when given, else ``val_fraction`` of the images
(:meth:`SRDataset.split`); it shares the training set's normalisation and
degradation, so the two are measured on one scale.
"""

from __future__ import annotations

import math

import numpy as np

from napari_resolve.errors import InputError


def run_datasets(data, val_data, *, scale: int, in_channels: int, normalization, degradation,
                 patch_size, seed: int, batch_size: int, world: int, patches_per_image,
                 val_patch, val_fraction):
    """``(train_ds, val_ds)`` for a model of ``scale`` and ``in_channels``.

    ``patches_per_image`` None: enough samples for 8 batches per epoch (over
    all ``world`` processes) with patches, 1 with whole images. Refuses a
    dataset of another scale or channel count and a constant training image
    (it has nothing to teach; issue 15).
    """
    from napari_resolve.data import datasets as D

    if data is None:
        raise InputError("no training data given")
    full = D.make_dataset(data, scale=scale, in_channels=in_channels, normalization=normalization,
                          degradation=degradation, patch_size=patch_size, seed=seed)
    if full.scale != scale or full.in_channels != in_channels:
        raise InputError(f"the dataset is x{full.scale} with {full.in_channels} channel(s) but the "
                         f"model is x{scale} with {in_channels}")
    if patches_per_image is None:
        per_epoch = 8 * batch_size * world
        patches_per_image = 1 if full.patch_size is None else max(1, math.ceil(per_epoch / len(full.items)))
    full.patches_per_image = int(patches_per_image)
    if val_data is not None:
        val_ds = D.make_dataset(val_data, scale=scale, in_channels=in_channels,
                                normalization=full.normalization, degradation=full.degradation,
                                seed=seed).as_validation(val_patch)
        train_ds = full
    else:
        train_ds, val_ds = full.split(val_fraction, seed=seed, val_patch=val_patch)
    for i, item in enumerate(train_ds.items):
        hr = np.asarray(train_ds._load(i)["hr"])
        if hr.size and float(hr.max()) == float(hr.min()):
            raise InputError(f"training image {item.name} is constant (every pixel the same); "
                             "it has nothing to learn from: remove it")
    return train_ds, val_ds
