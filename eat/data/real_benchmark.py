"""Moved to :mod:`eat.apps.real_benchmark`; this name stays importable for old code, with a
``DeprecationWarning``.

The old module name is the new module object itself, so every name, also a private one, and
monkeypatching keep working. Importing an application from the data layer is upward: this one import is
listed in the layer contract's ``ignore_imports`` (pyproject.toml). See "Layers" in docs/design.md.
"""

import sys
import warnings

from eat.apps import real_benchmark as _moved  # deprecation shim

warnings.warn("eat.data.real_benchmark moved to eat.apps.real_benchmark", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
