"""The stored torchaudio reference (tests/fixtures/torchaudio_reference.safetensors) and live torchaudio, if any.

``tools/make_torchaudio_reference.py`` recorded the file. It carries the input signals themselves (so nothing
depends on torch's random streams staying the same across versions) and, in its metadata, the Kaldi options of
every case in our spelling and in torchaudio's.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.torch import load_file

REF_PATH = Path(__file__).resolve().parent / "fixtures" / "torchaudio_reference.safetensors"
REF = load_file(str(REF_PATH))
with safe_open(str(REF_PATH), "pt") as _f:
    REF_META = _f.metadata()
SR = int(REF_META["sample_rate"])
EAT_KALDI = json.loads(REF_META["eat_kaldi"])  # the call EAT and AST make, torchaudio's argument names
OPTION_CASES = json.loads(REF_META["options"])  # case -> [our fbank() kwargs, torchaudio kwargs]


def names(prefix: str) -> list[str]:
    """Sorted case names stored under ``prefix.`` (e.g. ``fbank``, ``tone``, ``resample_in``)."""
    return sorted(k.split(".", 1)[1] for k in REF if k.startswith(prefix + "."))


def live_torchaudio(submodule: str):
    """``torchaudio.<submodule>``, or skip the test naming why torchaudio cannot be used here.

    Any exception counts, not only ImportError: a torchaudio built for another torch fails with an OSError
    (undefined symbol) at import, which must not become a collection error."""
    try:
        return importlib.import_module(f"torchaudio.{submodule}")
    except Exception as e:  # noqa: BLE001 - the reason is reported, whatever it is
        pytest.skip(f"live torchaudio check: torchaudio does not import here ({type(e).__name__}: {e})"[:300])
