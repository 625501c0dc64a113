"""What a loader batch holds, and the one device-side step that turns it into model input.

Every dataset of :mod:`eat.data.datasets` yields items that :func:`eat.data.loaders.collate` stacks into a
:class:`Batch`. Its keys are defined here and nowhere else. A batch carries the model input in one of two
forms, chosen by the dataset's ``return_waveform``:

* ``source``: the normalised fbank, made by the loader workers;
* ``wave`` + ``length``: fixed-length waveforms and their valid samples; the fbank then runs batched on
  the training device (:func:`model_input`), which is how a GPU keeps up with AudioSet-scale data.

:func:`model_input` is the single place where a batch becomes the ``(B, T, F)`` input on the device; the
pretraining and fine-tuning steps, evaluation and the benchmarks all call it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypedDict

import torch
from torch import Tensor

from eat.audio.fbank import FrontendConfig, waveform_to_input

if TYPE_CHECKING:  # annotations only: no import at run time
    from eat.data.datasets import Skipped

# ``(wave, length) -> (wave, length)`` on the device, applied before the fbank (e.g. waveform mixup)
WaveHook = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


class Batch(TypedDict, total=False):
    """A collated batch (``total=False``: which keys exist depends on the dataset, see each key).

    Model input (one of the two):
      ``source``  (B, T, F) float, normalised fbank of ``target_length`` frames (workers ran the front-end);
      ``wave``    (B, S) float, waveforms cropped/zero-padded to ``wave_length(frontend)`` samples, with
      ``length``  (B,) int64, the valid samples of each row (the rest is padding).
    Pretraining: ``mask`` (B * clones, N) bool, True = masked, rows ``b * clones + c``; with mixture
    pretraining also ``mix_rows`` (B, T') bool, the patch rows where mixture ``b`` carries clip ``b - 1``.
    Fine-tuning: ``target`` (B,) int64 class indices or (B, num_classes) float multi-hot.
    Position: ``index`` (B,) int64 dataset indices; ``epoch`` (B,) int64 (labelled datasets) - they seed
    batch-level augmentation so a resumed run repeats an unbroken one.
    Bookkeeping (always present): ``num_drawn`` sampler keys used (good or bad clips), ``num_skipped``
    unreadable clips dropped, ``skipped`` their :class:`~eat.data.datasets.Skipped` records. A batch whose
    clips were all unreadable holds only an empty ``index`` and the bookkeeping keys.
    """

    source: Tensor
    wave: Tensor
    length: Tensor
    mask: Tensor
    mix_rows: Tensor
    target: Tensor
    index: Tensor
    epoch: Tensor
    num_drawn: int
    num_skipped: int
    skipped: list[Skipped]


def model_input(batch: Batch, frontend: FrontendConfig, device: torch.device,
                wave_hook: WaveHook | None = None) -> Tensor:
    """The normalised fbank ``(B, T, F)`` of ``batch`` on ``device``, without waiting for the copy.

    A ``source`` batch is copied (``non_blocking``: pinned host memory overlaps with compute). A ``wave``
    batch is copied, passed through ``wave_hook`` if given, and turned into the fbank on the device with
    ``frontend`` (:func:`~eat.audio.fbank.waveform_to_input`, which honours each row's ``length``).
    """
    if "wave" in batch:
        wave = batch["wave"].to(device, non_blocking=True)
        length = batch["length"].to(device, non_blocking=True)
        if wave_hook is not None:
            wave, length = wave_hook(wave, length)
        return waveform_to_input(wave, frontend, lengths=length)
    if "source" not in batch:
        raise KeyError("the batch holds neither 'source' nor 'wave' (is it a batch of a dataset in eat.data?)")
    return batch["source"].to(device, non_blocking=True)
