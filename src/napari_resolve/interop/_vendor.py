"""One self-contained Python file with napari-resolve's networks, for model packages.

A BioImage Model Zoo ``pytorch_state_dict`` entry names an architecture source
*file* and a callable in it (``bioimageio.core`` imports that single file; it
cannot import a package). Our networks live in several modules
(``models/*``, ``models/blocks``, ``data/degrade`` for the MATLAB bicubic
inside the networks, ``data/color`` for GP's BT.601 on Y, ``errors``), so
:func:`architecture_source` writes one file that carries the exact source of
those modules as strings and installs them, on import, as a private package
``_napari_resolve_vendored_<hash>`` (``napari_resolve`` renamed in the copies,
so an installed napari-resolve of another version is neither used nor shadowed).

The file needs only ``torch`` and ``numpy``. Its callable
:class:`NapariResolveSR` ``(architecture, config)`` rebuilds the network with
the registry's ``build`` and returns the ``"sr"`` output as a tensor; the
state-dict keys are the network's with a ``net.`` prefix (as
:class:`SROutput` below, which the exporter traces and saves).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import torch
from torch import nn

__all__ = ["SROutput", "VENDORED_MODULES", "architecture_source", "CALLABLE"]

CALLABLE = "NapariResolveSR"
# (module name inside the package, file relative to src/napari_resolve, is a package)
VENDORED_MODULES = (
    ("", "__init__", True),  # an empty top-level package
    ("errors", "errors.py", False),
    ("data", "__init__", True),  # empty: only degrade and color are needed
    ("data.color", "data/color.py", False),  # GP's luma_sr (torch BT.601; numpy at import)
    ("data.degrade", "data/degrade.py", False),
    ("models", "models/__init__.py", True),
    ("models.base", "models/base.py", False),
    ("models.blocks", "models/blocks.py", False),
    ("models.baselines", "models/baselines.py", False),
    ("models.geometry_prior", "models/geometry_prior.py", False),
    ("models.mhtcun", "models/mhtcun.py", False),
    ("models.pathsrgan", "models/pathsrgan.py", False),
    ("models.srseg", "models/srseg.py", False),
)


class SROutput(nn.Module):
    """A napari-resolve model whose ``forward`` returns the ``"sr"`` tensor only.

    The model packages' network: one tensor in (N, C, h, w) in the bundle's
    normalised [0, 1] scale, one tensor out (N, C, s*h, s*w).
    """

    def __init__(self, net: nn.Module, output: str = "sr"):
        super().__init__()
        self.net = net
        self.output = output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[self.output]


_TEMPLATE = '''"""napari-resolve networks for a BioImage Model Zoo package (generated, do not edit).

napari-resolve {version}: {count} modules of its source, embedded below and installed
as the private package {package} when this file is imported. Needs torch and numpy.
Licence of this source: BSD-3-Clause (napari-resolve). Callable: {callable}(architecture,
config) -> torch.nn.Module returning the super-resolved tensor.
"""

import importlib.abc
import importlib.util
import sys

import torch

_PACKAGE = {package!r}
_SOURCES = {sources}
_PACKAGES = {packages!r}


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname != _PACKAGE and not fullname.startswith(_PACKAGE + "."):
            return None
        rel = fullname[len(_PACKAGE) + 1:]
        if rel not in _SOURCES:
            return None
        return importlib.util.spec_from_loader(fullname, self, is_package=rel in _PACKAGES)

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        rel = module.__name__[len(_PACKAGE) + 1:]
        code = compile(_SOURCES[rel], "<" + module.__name__ + ">", "exec")
        exec(code, module.__dict__)


if not any(isinstance(f, _Finder) and getattr(f, "package", None) == _PACKAGE
           for f in sys.meta_path):
    _finder = _Finder()
    _finder.package = _PACKAGE
    sys.meta_path.append(_finder)


class {callable}(torch.nn.Module):
    """The network ``architecture`` built with ``config``; ``forward`` returns ``output``."""

    def __init__(self, architecture, config, output="sr"):
        super().__init__()
        models = importlib.import_module(_PACKAGE + ".models")
        self.net = models.build(architecture, **dict(config))
        self.output = output

    def forward(self, x):
        return self.net(x)[self.output]
'''


def _root() -> Path:
    return Path(__file__).resolve().parents[1]


def architecture_source() -> str:
    """The text of the self-contained architecture file (deterministic for a given source)."""
    from napari_resolve import __version__

    root = _root()
    texts = {}
    for name, rel, _ in VENDORED_MODULES:
        texts[name] = "" if rel == "__init__" else (root / rel).read_text(encoding="utf-8")
    digest = hashlib.sha256(json.dumps(texts, sort_keys=True).encode()).hexdigest()[:12]
    package = f"_napari_resolve_vendored_{digest}"
    renamed = {k: re.sub(r"\bnapari_resolve\b", package, v) for k, v in texts.items()}
    body = "{\n" + "".join(f"    {k!r}: {v!r},\n" for k, v in renamed.items()) + "}"
    return _TEMPLATE.format(
        version=__version__,
        count=len(texts),
        package=package,
        sources=body,
        packages=tuple(n for n, _, pkg in VENDORED_MODULES if pkg),
        callable=CALLABLE,
    )
