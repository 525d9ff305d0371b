"""BarlowTwins-CXR: self-supervised pre-training for chest X-ray abnormality detection.

The Python API (docs/api.md), loaded on first use so that `import btcxr` stays light (no torch):

    btcxr.load_backbone(path, arch=None)      -> torchvision ResNet from any supported checkpoint layout
    btcxr.load_detector(path, device="auto")  -> Detector; .predict(images) -> boxes in original pixels
    btcxr.evaluate(gt, pred, classes=None)    -> metrics dict (+ .per_class)
    btcxr.explain(detector, images, out)      -> heatmaps of the detected boxes
"""

from __future__ import annotations

import importlib
import types
from typing import Any

__version__ = "0.1.0"

_API = ("Detector", "Evaluation", "evaluate", "load_backbone", "load_detector")
__all__ = ["__version__", "explain", *_API]


def __getattr__(name: str) -> Any:
    # PEP 562 lazy attribute: btcxr.api (torch, torchvision, pandas) is imported on first access only.
    # importlib rather than an import statement: modules that read btcxr.__version__ (engine.checkpoint,
    # cli) must not depend on btcxr.api through the package (tests/test_imports.py counts statements).
    if name in _API:
        value = getattr(importlib.import_module("btcxr.api"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'btcxr' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})


class _CallablePackage(types.ModuleType):
    """`btcxr.explain` is the subpackage (btcxr.explain.run, ...), which Python's import system binds to that
    name whatever we put there, and also the API function: calling it calls btcxr.api.explain
    (signature and documentation: btcxr.api.explain, docs/api.md)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return importlib.import_module("btcxr.api").explain(*args, **kwargs)


# The subpackage's __init__ is a docstring: importing it here costs nothing.
importlib.import_module("btcxr.explain").__class__ = _CallablePackage
