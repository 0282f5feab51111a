"""Data: degradation, colour, intensities, parsing maps, sample data and datasets.

Modules (imported on use, so ``import napari_resolve.data`` stays cheap):

- ``degrade``: MATLAB-exact bicubic ``imresize`` (NumPy and torch), blur-downsample
- ``color``: MATLAB ``rgb2ycbcr`` / ``ycbcr2rgb`` (BT.601)
- ``normalize``: ``Normalizer`` (dtype or CSBDeep percentiles) and ``to_dtype``
- ``labels``: parsing maps 0 background / 1 cytoplasm / 2 nucleus, masks, LabelMe
- ``samples``: loaders for ``sample_data/`` and the full data sets
- ``registration``: PathSRGAN correlation registration of multi-objective scans, pairs folders
- ``simulate``: simulated multi-objective scans (Airy PSF, offsets, noise) with known offsets
"""
