"""Training and fine-tuning (paper recipes, progress events, checkpoints).

>>> from napari_resolve import train
>>> result = train.train("mhtcun-lite", "my_hr_images/", epochs=10, output="mine.safetensors")
>>> for event in train.train_iter("gp", {"hr": images, "labels": masks}, minutes=5): ...

See :mod:`napari_resolve.train.engine` (the loop; its parts :mod:`~.events`,
:mod:`~.devices`, :mod:`~.objectives`, :mod:`~.interrupt`), :mod:`~.recipes` (each
paper's schedule), :mod:`~.checkpoint` (resume files) and :mod:`~.finetuning`
(fine-tuning a bundle; :mod:`~.finetune_data`, :mod:`~.finetune_measure`).
"""

import importlib

# imported on first use (PEP 562), so that ``train.recipes`` loads without torch (issue 18)
_LAZY = {
    "TrainEvent": "engine", "TrainResult": "engine", "finetune": "engine",
    "finetune_iter": "engine", "train": "engine", "train_iter": "engine",
    "RECIPES": "recipes", "Phase": "recipes", "Recipe": "recipes",
    "default_for": "recipes", "finetune_recipe": "recipes",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f"napari_resolve.train.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'napari_resolve.train' has no attribute {name!r}")


__all__ = [
    "TrainEvent",
    "TrainResult",
    "train_iter",
    "train",
    "finetune_iter",
    "finetune",
    "Recipe",
    "Phase",
    "RECIPES",
    "default_for",
    "finetune_recipe",
]
