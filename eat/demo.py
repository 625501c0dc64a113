"""Moved to :mod:`eat.apps.demo`; this name stays importable for old code, with a ``DeprecationWarning``.

The old module name is the new module object itself, so every name, also a private one, and
monkeypatching keep working. See "Layers" in docs/design.md.
"""

import sys
import warnings

from eat.apps import demo as _moved  # deprecation shim

warnings.warn("eat.demo moved to eat.apps.demo", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
