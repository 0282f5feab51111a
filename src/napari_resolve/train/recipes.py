"""Each paper's training schedule as a named :class:`Recipe`.

A recipe is a list of :class:`Phase` (what is trained, with which loss terms
and weights, for how many epochs) plus the optimiser and learning-rate rule.
Epoch counts are the papers'; :func:`plan` rescales them to the epochs or the
time a user gives.

Loss terms (``Phase.losses`` keys; ``term@mr`` applies a term to PathSRGAN's
medium-resolution output ``"mr"`` against the HR image resized to its size):

=============== =============================================================
``charbonnier`` :func:`napari_resolve.losses.charbonnier` (ε = 1e-3)
``mse``         pixel MSE
``mse_ssim``    MSE + 0.1·(1 − SSIM) on ``"sr"``
``staged``      MHTCUN's cascade loss on ``"stages"`` (``mse_ssim`` if none)
``parsing``     cross entropy of ``"parsing"`` against the label image
``segmentation`` masked cross entropy of ``"segmentation"`` (LR size)
``perceptual``  MSE of feature maps of a frozen feature network
``adversarial`` generator loss against a discriminator (recipe's kind)
``task``        loss through a frozen task model (paper 002 §IV-E)
=============== =============================================================

Terms that need data the run does not have (labels, a task model) are left
out with a message rather than failing: a prior-guided model can be
fine-tuned on images alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from napari_resolve.errors import InputError

__all__ = [
    "Phase", "Recipe", "RECIPES", "get", "default_for", "for_bundle", "finetune_recipe", "with_task",
    "plan",
]


@dataclass(frozen=True)
class Phase:
    """One stage of a schedule.

    ``train``: attribute names of the sub-modules that learn (empty = the
    whole model; the rest is frozen and kept in eval mode). ``lr``: this
    phase's starting learning rate (None = the recipe's).
    """

    name: str
    epochs: int
    losses: dict
    train: tuple = ()
    lr: float | None = None


@dataclass(frozen=True)
class Recipe:
    """A named schedule; see the module docstring.

    ``schedule``: ``"constant"``; ``"halve-per-epoch"`` (×0.5 every epoch,
    paper 002); ``"step"`` (×``gamma`` every ``step_epochs`` epochs of a
    phase, rescaled with the phase's length). ``discriminator``:
    ``"patchgan"`` (paper 002) or ``"srgan"`` (paper 004) for
    ``adversarial`` terms. ``patch_size`` in HR pixels, None = whole images.
    ``optimizer``: ``"adam"`` (every paper) or ``"sgd"`` (plain gradient
    descent, for checks: one step with rate 1 subtracts the gradient).
    """

    name: str
    paper: str
    description: str
    phases: tuple
    lr: float = 1e-4
    betas: tuple = (0.9, 0.999)
    batch_size: int = 8
    patch_size: int | None = None
    schedule: str = "constant"
    step_epochs: int = 10
    gamma: float = 0.5
    discriminator: str | None = None
    optimizer: str = "adam"
    options: dict = field(default_factory=dict)

    @property
    def epochs(self) -> int:
        return sum(p.epochs for p in self.phases)

    def describe(self) -> dict:
        """JSON-able summary for the bundle metadata."""
        return {
            "name": self.name,
            "paper": self.paper,
            "phases": [
                {
                    "name": p.name,
                    "epochs": p.epochs,
                    "losses": dict(p.losses),
                    "train": list(p.train) or "all",
                    "lr": p.lr or self.lr,
                }
                for p in self.phases
            ],
            "optimizer": {"name": self.optimizer, "lr": self.lr, "betas": list(self.betas)},
            "schedule": {
                "kind": self.schedule,
                "step_epochs": self.step_epochs,
                "gamma": self.gamma,
            },
            "batch_size": self.batch_size,
            "patch_size": self.patch_size,
            "discriminator": self.discriminator,
            "options": dict(self.options),
        }


RECIPES: dict[str, Recipe] = {}


def _add(recipe: Recipe) -> Recipe:
    RECIPES[recipe.name] = recipe
    return recipe


_add(
    Recipe(
        name="gp",
        paper="Hua et al. 2020 (paper 000) §2.3, §2.5, §3.4",
        description="End-to-end: Charbonnier + 1·parsing CE, Adam 1e-4, batch 8, whole images",
        phases=(Phase("end-to-end", 100, {"charbonnier": 1.0, "parsing": 1.0}),),
        lr=1e-4,
        betas=(0.9, 0.999),
        batch_size=8,
        patch_size=None,
        # §2.5 gives Adam 1e-4; §3.4 trains the compared nets "with the same parameter
        # settings as our network": 1e-4 halved every 10 epochs, batch 8, 100 epochs.
        schedule="step",
        step_epochs=10,
        gamma=0.5,
    )
)
_add(
    Recipe(
        name="gp-pretrained-prior",
        paper="paper 000 §2.3, §2.5, with the prior net pre-trained (issue 14)",
        description="Second stage after pre-training the prior U-Net on parsing maps "
        "(napari_resolve.train.parsing): the SR branch learns with Charbonnier, the prior "
        "net is frozen; Adam 1e-4",
        phases=(Phase("sr-branch", 100, {"charbonnier": 1.0}, train=("sr_net",)),),
        # A departure from §2.5 (end to end from the start), for CPU budgets: the prior
        # net keeps what it learned from the augmented cells and smears (red cells are
        # background), and a step costs the U-Net's forward pass only. The end-to-end
        # fine-tuning of §2.5 (recipe "gp") can follow where the budget allows.
        lr=1e-4,
        batch_size=8,
        patch_size=None,
        schedule="step",
        step_epochs=10,
        gamma=0.5,
    )
)
_add(
    Recipe(
        name="sr-mse",
        paper="paper 000 §3.4 settings for the baselines (SRCNN, SRResNet)",
        description="MSE, Adam 1e-4 halved every 10 epochs, batch 8, whole images",
        phases=(Phase("mse", 100, {"mse": 1.0}),),
        lr=1e-4,
        batch_size=8,
        patch_size=None,
        schedule="step",
        step_epochs=10,
        gamma=0.5,
    )
)
_add(
    Recipe(
        name="pathsrgan",
        paper="Ma et al. 2020 (paper 002) §III-B, §IV-B",
        description="G1 (LR→MR), then G2 with G1 frozen, then both at 1e-5; "
        "MSE + 6e-3·perceptual + 1e-3·PatchGAN; lr halved every epoch",
        phases=(
            Phase(
                "g1",
                6,
                {"mse@mr": 1.0, "perceptual@mr": 6e-3, "adversarial@mr": 1e-3},
                train=("g1",),
            ),
            Phase("g2", 6, {"mse": 1.0, "perceptual": 6e-3, "adversarial": 1e-3}, train=("g2",)),
            Phase(
                "joint",
                2,
                {
                    "mse@mr": 1.0,
                    "perceptual@mr": 6e-3,
                    "adversarial@mr": 1e-3,
                    "mse": 1.0,
                    "perceptual": 6e-3,
                    "adversarial": 1e-3,
                },
                train=(),
                lr=1e-5,
            ),
        ),
        # α = 6e-3 (perceptual) and β = 1e-3 (adversarial) from §IV-B; the length of
        # the joint fine-tuning is not given (2 epochs here); the patch size is not
        # given (128 HR px). Adam β = (0.9, 0.999) for G and D as in §IV-B.
        lr=1e-4,
        betas=(0.9, 0.999),
        batch_size=8,
        patch_size=128,
        schedule="halve-per-epoch",
        discriminator="patchgan",
    )
)
_add(
    Recipe(
        name="srseg",
        paper="Rad et al. 2019 (paper 004) §3.3, §4",
        description="25 epochs MSE, 25 more + 0.8·masked segmentation CE, 55 more + "
        "2e-6·perceptual + 1e-3·adversarial; Adam 1e-3 ÷10 every 20 epochs",
        phases=(
            Phase("mse", 25, {"mse": 1.0}),
            Phase("segmentation", 25, {"mse": 1.0, "segmentation": 0.8}),
            Phase(
                "adversarial",
                55,
                {"mse": 1.0, "perceptual": 2e-6, "adversarial": 1e-3, "segmentation": 0.8},
            ),
        ),
        # α, β, γ, δ = 1, 2e-6, 1e-3, 0.8 (§4). The decay "by a factor of 10 every 20
        # epochs" restarts in each phase here (the paper does not say; counted over
        # all 105 epochs the last phase would run at 1e-6 and below). β = 2e-6 was
        # tuned for VGG features; with another feature network rescale it (options).
        lr=1e-3,
        batch_size=16,
        patch_size=96,
        schedule="step",
        step_epochs=20,
        gamma=0.1,
        discriminator="srgan",
        options={"boundary_radius": 2},
    )
)
_add(
    Recipe(
        name="mhtcun",
        paper="Gong et al. 2021 (paper 003) §3, §4.6",
        description="Staged loss (MSE + 0.1·(1−SSIM), stage weights 0.3/0.3/1 vs ×4/×2-blurred "
        "targets), Adam 1e-4, step decay",
        phases=(Phase("staged", 100, {"staged": 1.0}),),
        # "step decay" without numbers: ×0.5 every quarter of the run; batch and patch
        # not given: 8 patches of 128 HR px (the BioSR / DFCAN convention).
        lr=1e-4,
        batch_size=8,
        patch_size=128,
        schedule="step",
        step_epochs=25,
        gamma=0.5,
    )
)
_add(
    Recipe(
        name="mse-ssim",
        paper="paper 003 §4.6 settings for the compared models (DFCAN)",
        description="MSE + 0.1·(1−SSIM), Adam 1e-4, step decay, 128 px patches",
        phases=(Phase("mse-ssim", 100, {"mse_ssim": 1.0}),),
        lr=1e-4,
        batch_size=8,
        patch_size=128,
        schedule="step",
        step_epochs=25,
        gamma=0.5,
    )
)

# Issue 13: the fluorescence bundles, trained for minutes on a shared CPU on real
# pairs + calibrated simulation (scripts/train_fluorescence.py). Same losses as
# the papers; a few hundred steps is all a shared 2-core CPU gives in an hour,
# so the rate is 6x the paper's 1e-4 with batch 4 (more, noisier steps) and
# halves every 8 epochs (an epoch here is ~100 steps); 64-px HR patches at x2,
# 128 at x4 (scripts/train_fluorescence.py gives its own per job). Checkpoints are
# chosen on fit-PSNR (``val_metric="fit"``), the figure the held-out regions report.
_add(
    Recipe(
        name="mhtcun-fluo",
        paper="Gong et al. 2021 (paper 003) §3, §4.6; CPU budget of issue 13",
        description="MHTCUN staged loss, Adam 6e-4 halved every 8 epochs, batch 4",
        phases=(Phase("staged", 40, {"staged": 1.0}),),
        lr=6e-4,
        batch_size=4,
        patch_size=64,
        schedule="step",
        step_epochs=8,
        gamma=0.5,
        options={"val_metric": "fit"},
    )
)
_add(
    Recipe(
        name="mse-ssim-fluo",
        paper="paper 003 §4.6 settings for DFCAN; CPU budget of issue 13",
        description="MSE + 0.1·(1−SSIM), Adam 6e-4 halved every 8 epochs, batch 4 (same budget "
        "as mhtcun-fluo)",
        phases=(Phase("mse-ssim", 40, {"mse_ssim": 1.0}),),
        lr=6e-4,
        batch_size=4,
        patch_size=64,
        schedule="step",
        step_epochs=8,
        gamma=0.5,
        options={"val_metric": "fit"},
    )
)

# Issue 13, x4 wide field -> STORM (SFSRM): the same schedules with the SSIM term
# off (option ``ssim_weight`` 0: MSE per stage). A STORM image is a sparse
# scatter of localisations; its SSIM with any smooth prediction is ~0.09, so
# 0.1 (1 - SSIM) ~ 0.09 stays while the MSE a model can still win is a few
# thousandths (predicting ~0 already scores 0.03): the SSIM term then decides
# the gradient and rewards local variance (grain), not the structure that the
# fit-PSNR measures. 184 steps with it left the held-out fit-PSNR at bicubic's.
for _base in ("mhtcun-fluo", "mse-ssim-fluo"):
    _r = RECIPES[_base]
    _add(replace(_r, name=f"{_base}-storm", options={**_r.options, "ssim_weight": 0.0},
                 description=_r.description.replace("MHTCUN staged loss", "MHTCUN staged MSE")
                 .replace("MSE + 0.1·(1−SSIM)", "MSE") + "; SSIM term off for STORM targets"))

# Paper 004's ablation (§4.4): the same three phases with the segmentation weight at 0,
# so the segmentation extension is built but never trained (= SRGAN on our data).
_r = RECIPES["srseg"]
_add(replace(_r, name="srseg-noseg",
             phases=tuple(replace(p, losses={k: (0.0 if k == "segmentation" else v)
                                             for k, v in p.losses.items()})
                          for p in _r.phases),
             description=_r.description + " (segmentation weight 0: paper 004's ablation)"))

_DEFAULTS = {
    "gp": "gp",
    "np": "gp",
    "srcnn": "sr-mse",
    "srresnet": "sr-mse",
    "srseg": "srseg",
    "mhtcun": "mhtcun",
    "mhtcun-lite": "mhtcun",
    "dfcan": "mse-ssim",
    "pathsrgan": "pathsrgan",
}


def get(name) -> Recipe:
    """The recipe called ``name`` (or ``name`` itself if it is a :class:`Recipe`)."""
    if isinstance(name, Recipe):
        return name
    try:
        return RECIPES[str(name)]
    except KeyError:
        raise InputError(
            f"unknown recipe {name!r}; available: {', '.join(sorted(RECIPES))}"
        ) from None


def default_for(arch: str) -> Recipe:
    """The paper's recipe for a registry architecture (``sr-mse`` for others)."""
    return RECIPES[_DEFAULTS.get(arch, "sr-mse")]


def for_bundle(meta: dict) -> Recipe:
    """The paper recipe of a bundle's architecture, validated as the bundle was.

    A bundle trained with ``val_metric="fit"`` (the fluorescence recipes:
    checkpoints chosen on fit-PSNR; recorded, or the option of the recipe of
    that name now) is fine-tuned with the same choice.
    """
    base = default_for(str(meta.get("architecture", "")))
    used = (meta.get("training") or {}).get("recipe") or {}
    known = RECIPES.get(str(used.get("name", "")).removesuffix("-finetune"))
    recorded = {**(used.get("options") or {}), **(known.options if known else {})}
    if "val_metric" in recorded and recorded["val_metric"] != base.options.get("val_metric"):
        base = replace(base, options={**base.options, "val_metric": recorded["val_metric"]})
    return base


def finetune_recipe(base: Recipe, lr: float | None = None) -> Recipe:
    """Fine-tuning variant of ``base``: its last phase, all weights, constant rate.

    Adversarial terms are dropped: a discriminator starting from scratch
    destabilises a short run on few images (paper 003 §4.5 fine-tunes with
    its ordinary loss). The rate is ``min(base.lr, 1e-4)`` unless given.
    """
    last = base.phases[-1]
    losses = {k: v for k, v in last.losses.items() if not k.startswith("adversarial")}
    phase = Phase("finetune", max(1, last.epochs // 4), losses, train=())
    return replace(
        base,
        name=f"{base.name}-finetune",
        phases=(phase,),
        lr=float(lr or min(base.lr, 1e-4)),
        schedule="constant",
        description=f"fine-tuning with the loss of {base.name}'s last phase",
    )


def with_task(base: Recipe, weight: float = 1e-3, output: str = "sr") -> Recipe:
    """``base`` plus a task loss through a frozen task model (paper 002 §IV-E).

    The paper adjusts G1 with a lesion classifier on the 10× output (eq. 7,
    "L_Ctask only optimizes G1") and G2 with a nucleus segmenter on the 20×
    output (eq. 8, "only optimizes G2"). ``output="mr"`` adds ``task@mr`` to
    the phases that train ``g1`` alone, ``output="sr"`` adds ``task`` to those
    that train ``g2`` alone, so only that generator learns from it (recipes
    without such phases get it in every phase). Train with ``task_model=``
    (logits from the image) and label images; without them the term is left
    out with a message. The labels are the dataset's label images (HR size),
    so a task model on ``"mr"`` must give logits of that size (or of the
    labels' shape it is trained for); per-image classes are not read from
    datasets yet. The paper gives no weight: 1e-3 (as the adversarial
    term) by default, since a fixed task model pulls against image quality
    ("a compromise", §IV-E).
    """
    if output not in ("sr", "mr"):
        raise InputError(f"task output must be 'sr' or 'mr', got {output!r}")
    if not (float(weight) > 0):
        raise InputError(f"task loss weight must be positive, got {weight}")
    key, part = ("task@mr", "g1") if output == "mr" else ("task", "g2")
    targets = [i for i, p in enumerate(base.phases) if tuple(p.train) == (part,)]
    if not targets:
        targets = list(range(len(base.phases)))
    phases = tuple(
        replace(p, losses={**p.losses, key: float(weight)}) if i in targets else p
        for i, p in enumerate(base.phases)
    )
    return replace(
        base,
        name=f"{base.name}+task",
        phases=phases,
        description=f"{base.description}; + {weight:g}·task loss on {output!r}",
    )


def plan(recipe: Recipe, epochs=None, minutes=None) -> list[dict]:
    """Epochs (and time share) of each phase for a run of ``epochs`` or ``minutes``.

    ``epochs``: None = the paper's; an int is shared among the phases in the
    paper's proportions (at least one each); a list gives each phase's.
    With only ``minutes``, phases run until their share of the time (the
    paper's proportions) is spent; with both, ``minutes`` caps the whole run.
    Returns one dict per phase:
    ``{"epochs": int | None, "seconds": float | None, "step_epochs": int}``.
    """
    n = len(recipe.phases)
    paper = [p.epochs for p in recipe.phases]
    if epochs is None and minutes is not None:
        counts = [None] * n
    elif epochs is None:
        counts = list(paper)
    elif isinstance(epochs, (list, tuple)):
        if len(epochs) != n:
            raise InputError(f"recipe {recipe.name} has {n} phases; got {len(epochs)} epoch counts")
        counts = [int(e) for e in epochs]
    else:
        total = int(epochs)
        if total < n:
            raise InputError(f"recipe {recipe.name} has {n} phases: give at least {n} epochs")
        raw = [total * e / sum(paper) for e in paper]
        counts = [max(1, int(math.floor(r))) for r in raw]
        # hand out what rounding left to the phases that lost the most
        for i in sorted(range(n), key=lambda i: counts[i] - raw[i])[: total - sum(counts)]:
            counts[i] += 1
    if any(c is not None and c < 0 for c in counts):
        raise InputError(f"epochs must be >= 0, got {epochs}")
    seconds = [None] * n
    if minutes is not None and not (float(minutes) > 0):
        raise InputError(f"minutes must be positive, got {minutes}")
    if minutes is not None and epochs is None:
        seconds = [60.0 * float(minutes) * e / sum(paper) for e in paper]
    out = []
    for phase, count, sec in zip(recipe.phases, counts, seconds):
        ref = count if count is not None else phase.epochs
        step = max(1, int(round(recipe.step_epochs * ref / max(phase.epochs, 1))))
        out.append({"epochs": count, "seconds": sec, "step_epochs": step})
    return out
