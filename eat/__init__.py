"""eat: EAT-style self-supervised audio pretraining in plain PyTorch.

The top level keeps imports light: ``eat.load_encoder`` and ``eat.load_classifier`` are resolved lazily
from :mod:`eat.export` on first use, ``eat.load_detector`` (a sound event detector) from :mod:`eat.detect`.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["load_classifier", "load_detector", "load_encoder", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("load_encoder", "load_classifier"):
        from eat import export  # lazy: `import eat` stays cheap (no torch) until a loader is used

        return getattr(export, name)
    if name == "load_detector":
        from eat import detect  # lazy, as above

        return detect.load_detector
    raise AttributeError(f"module 'eat' has no attribute {name!r}")
