"""The one reader of a device name given by a user (``--device``, ``device=`` of the loading functions).

``resolve_device("bogus")`` is a :class:`~eat.config.ConfigError` naming the option, not PyTorch's list of
every backend it was built with; ``cuda`` on a machine without CUDA says so before any tensor moves.
"""

from __future__ import annotations

import torch

from eat.config import ConfigError


def resolve_device(name: str | torch.device | None, key: str = "--device") -> torch.device:
    """``auto`` / ``None`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or a
    ``torch.device``; anything else, or an accelerator this machine lacks, is a ConfigError naming ``key``."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"{key}: {name!r} is not a device; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{key} {name}: CUDA is not available here (use cpu or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"{key} {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError(f"{key} {name}: MPS is not available here (use cpu or auto)")
    elif device.type not in ("cpu", "cuda", "mps", "meta"):
        raise ConfigError(f"{key}: device type {device.type!r} is not supported here; use cpu, cuda or auto")
    return device
