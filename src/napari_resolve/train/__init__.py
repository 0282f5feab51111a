"""Training and fine-tuning (paper recipes, progress events, checkpoints).

>>> from napari_resolve import train
>>> result = train.train("mhtcun-lite", "my_hr_images/", epochs=10, output="mine.safetensors")
>>> for event in train.train_iter("gp", {"hr": images, "labels": masks}, minutes=5): ...

See :mod:`napari_resolve.train.engine` (the loop), :mod:`~.recipes` (each
paper's schedule) and :mod:`~.checkpoint` (resume files).
"""

from napari_resolve.train.engine import (
    TrainEvent,
    TrainResult,
    finetune,
    finetune_iter,
    train,
    train_iter,
)
from napari_resolve.train.recipes import RECIPES, Phase, Recipe, default_for, finetune_recipe

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
