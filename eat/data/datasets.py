"""Map-style datasets for pretraining and fine-tuning, with per-sample seeding and a bad-file policy.

**Keys.** Items are fetched with ``dataset[(index, epoch)]`` (what the samplers in
:mod:`eat.data.loaders` yield) or a plain ``dataset[index]`` (epoch 0). All randomness of an item (random
crop, augmentation, the pretraining masks) comes from :func:`sample_generator`, a fresh
``torch.Generator`` keyed by ``(dataset seed, epoch, index)``. So an item is the same whichever worker
makes it, however many workers there are, and whether or not the run was resumed; the masks are still
made in the loader workers, as in the official code.

**Bad files.** A clip that cannot be decoded, is empty, is shorter than one analysis frame or holds
non-finite samples comes back as a :class:`Skipped` record instead of a dict. The collate function drops
it and reports it in the batch; :class:`eat.data.loaders.SkippingLoader` logs every bad file once and
stops the run when more than ``max_bad_fraction`` of an epoch's clips are bad.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from eat.audio.fbank import FrontendConfig, num_frames, waveform_to_input
from eat.audio.io import AudioError, load_audio, remove_dc
from eat.data.manifest import LabelledItem, LabelSet, Manifest, read_manifest
from eat.model.masking import inverse_block_mask
from eat.model.mixing import draw_mix_rows

WaveTransform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


class Skipped(NamedTuple):
    """Stands in for an item whose file could not be used; the collate function drops it."""

    path: str
    reason: str


@dataclass
class MaskConfig:
    """Inverse block masks made per clip in the loader workers (EAT: 16 clones, 80 %, 5x5 blocks).

    ``grid`` is the model's patch grid ``(T', F')``; ``None`` means 16x16 patches without overlap,
    ``(target_length // 16, num_mel_bins // 16)``.
    """

    clones: int = 16
    mask_ratio: float = 0.8
    block: int = 5
    adjust: float = 0.07
    grid: tuple[int, int] | None = None
    # > 0: mixture pretraining (SSLAM stage 2); every item also holds ``mix_rows`` (T',) bool, the patch rows
    # where its mixture carries the partner clip, with two clean windows of this many rows (eat.model.mixing)
    mix_clean_rows: int = 0


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A CPU generator keyed by ``(seed, epoch, index)``; nearby keys give unrelated streams."""
    state = np.random.SeedSequence([seed & 0xFFFFFFFF, seed >> 32, epoch, index]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def split_key(key: int | tuple[int, int]) -> tuple[int, int]:
    """``(index, epoch)`` from a sampler key; a plain index means epoch 0."""
    if isinstance(key, (tuple, list)):
        return int(key[0]), int(key[1])
    return int(key), 0


def wave_length(frontend: FrontendConfig) -> int:
    """Samples that make exactly ``frontend.target_length`` frames (25 ms frames every 10 ms: 164080)."""
    win = int(frontend.sample_rate * frontend.frame_length_ms / 1000)
    hop = int(frontend.sample_rate * frontend.frame_shift_ms / 1000)
    return win + (frontend.target_length - 1) * hop


def fixed_length_wave(
    wave: torch.Tensor, frontend: FrontendConfig, crop: str, generator: torch.Generator
) -> tuple[torch.Tensor, int]:
    """Crop or zero-pad ``wave`` to :func:`wave_length` samples; returns ``(wave, valid samples)``.

    The crop starts on a frame boundary: frame 0 (``crop="head"``) or a uniform frame among those that
    leave ``target_length`` full frames (``"random"``), matching the spectrogram-domain crop.
    ``waveform_to_input(waves, frontend, lengths)`` on a batch of these gives the model input.
    """
    size = wave_length(frontend)
    n = wave.numel()
    if n <= size:
        return torch.nn.functional.pad(wave, (0, size - n)), n
    start = 0
    if crop == "random":
        room = int(num_frames(n, frontend.sample_rate, frontend.frame_length_ms, frontend.frame_shift_ms))
        room -= frontend.target_length
        hop = int(frontend.sample_rate * frontend.frame_shift_ms / 1000)
        start = int(torch.randint(room + 1, (), generator=generator)) * hop
    return wave[start : start + size], size


def read_clip(path: Path, frontend: FrontendConfig) -> torch.Tensor | Skipped:
    """Decode one clip at the front-end's rate, or a :class:`Skipped` saying why it is unusable."""
    try:
        wave = load_audio(path, sample_rate=frontend.sample_rate)
    except AudioError as e:
        return Skipped(str(path), e.reason)
    return check_clip(wave, str(path), frontend)


def check_clip(wave: torch.Tensor, name: str, frontend: FrontendConfig) -> torch.Tensor | Skipped:
    """``wave`` itself, or a :class:`Skipped` when it is shorter than one frame. Non-finite samples never get
    here: decoding refuses them (:mod:`eat.audio.io`), and resampling finite samples keeps them finite."""
    min_len = int(frontend.sample_rate * frontend.frame_length_ms / 1000)
    if wave.numel() < min_len:
        return Skipped(name, f"only {wave.numel()} samples, shorter than one {frontend.frame_length_ms} ms frame")
    return wave


class PretrainDataset(Dataset):
    """Unlabelled clips of a manifest -> ``{"source" | ("wave", "length"), ["mask"], "index"}``.

    ``source`` is the normalised fbank ``[target_length, num_mel_bins]``. With ``return_waveform=True``
    the item holds instead ``wave`` (``wave_length(frontend)`` samples, cropped/padded in the waveform
    domain) and ``length`` (valid samples), so the trainer can run the front-end on the GPU. With a
    ``mask_cfg`` the item also holds ``mask`` ``[clones, T'*F']`` (bool, True = masked), and with its
    ``mix_clean_rows`` also ``mix_rows`` ``[T']`` (bool, the rows of its mixture that carry the partner).
    """

    def __init__(
        self,
        manifest: Manifest | str | Path,
        frontend: FrontendConfig,
        mask_cfg: MaskConfig | None = None,
        return_waveform: bool = False,
        seed: int = 0,
        max_bad_fraction: float = 0.01,
    ):
        # a Manifest, a tsv path, or anything with len() and path(i) (e.g. eat.data.shards.ShardSet)
        self.manifest = read_manifest(manifest) if isinstance(manifest, (str, Path)) else manifest
        self.frontend = frontend
        self.mask_cfg = mask_cfg
        self.return_waveform = return_waveform
        self.seed = seed
        self.max_bad_fraction = max_bad_fraction
        if mask_cfg is not None:
            self.grid = mask_cfg.grid or (frontend.target_length // 16, frontend.num_mel_bins // 16)

    def __len__(self) -> int:
        return len(self.manifest)

    def read(self, index: int) -> torch.Tensor | Skipped:
        """Clip ``index`` decoded at the front-end's rate (or why it is unusable); shard datasets override it."""
        return read_clip(self.manifest.path(index), self.frontend)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any] | Skipped:
        index, epoch = split_key(key)
        wave = self.read(index)
        if isinstance(wave, Skipped):
            return wave
        g = sample_generator(self.seed, epoch, index)
        item: dict[str, Any] = {"index": index}
        if self.return_waveform:
            item["wave"], item["length"] = fixed_length_wave(wave, self.frontend, self.frontend.crop, g)
        else:
            item["source"] = waveform_to_input(wave, self.frontend, generator=g)
        if self.mask_cfg is not None:
            m = self.mask_cfg
            item["mask"] = inverse_block_mask(m.clones, self.grid, m.mask_ratio, m.block, m.adjust, generator=g)
            if m.mix_clean_rows:  # drawn after the masks, which thus stay those of a plain run
                item["mix_rows"] = draw_mix_rows(self.grid[0], m.mix_clean_rows, g)
        return item


class LabelledDataset(Dataset):
    """Labelled clips -> ``{"source" | ("wave", "length"), "target", "index", "epoch"}``.

    ``target`` is a float multi-hot ``[num_classes]`` for multi-label tasks, else the class index (int).
    With ``train=True`` the front-end's crop mode applies and ``wave_transform(wave, generator)`` (e.g.
    roll + gain) runs on the DC-free waveform, as in EAT; evaluation (``train=False``) always takes the
    head crop and no transform.
    """

    def __init__(
        self,
        items: Sequence[LabelledItem],
        frontend: FrontendConfig,
        num_classes: int,
        multi_label: bool,
        wave_transform: WaveTransform | None = None,
        train: bool = False,
        return_waveform: bool = False,
        seed: int = 0,
        max_bad_fraction: float = 0.01,
    ):
        bad = [it for it in items if any(not 0 <= c < num_classes for c in it.labels) or not it.labels]
        if bad:
            raise ValueError(f"{bad[0].path}: labels {list(bad[0].labels)} outside 0..{num_classes - 1} or empty")
        self.items = list(items)
        self.frontend = frontend
        self.num_classes = num_classes
        self.multi_label = multi_label
        self.wave_transform = wave_transform
        self.train = train
        self.return_waveform = return_waveform
        self.seed = seed
        self.max_bad_fraction = max_bad_fraction
        self.crop = frontend.crop if train else "head"
        self._frontend = replace(frontend, crop=self.crop)

    @classmethod
    def from_labels(cls, labels: LabelSet, frontend: FrontendConfig, **kwargs: Any) -> LabelledDataset:
        """Dataset over a :class:`LabelSet` (its class count and multi-label flag)."""
        return cls(labels.items, frontend, labels.num_classes, labels.multi_label, **kwargs)

    def __len__(self) -> int:
        return len(self.items)

    def target(self, index: int) -> torch.Tensor | int:
        labels = self.items[index].labels
        if not self.multi_label:
            return labels[0]
        hot = torch.zeros(self.num_classes)
        hot[list(labels)] = 1.0
        return hot

    def read(self, index: int) -> torch.Tensor | Skipped:
        """Clip ``index`` decoded at the front-end's rate (or why it is unusable); shard datasets override it."""
        return read_clip(self.items[index].path, self.frontend)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any] | Skipped:
        index, epoch = split_key(key)
        wave = self.read(index)
        if isinstance(wave, Skipped):
            return wave
        g = sample_generator(self.seed, epoch, index)
        if self.train and self.wave_transform is not None:
            if self.frontend.remove_dc:
                wave = remove_dc(wave)
            wave = self.wave_transform(wave, g)
        item: dict[str, Any] = {"index": index, "epoch": epoch, "target": self.target(index)}
        if self.return_waveform:
            item["wave"], item["length"] = fixed_length_wave(wave, self.frontend, self.crop, g)
        else:
            item["source"] = waveform_to_input(wave, self._frontend, generator=g)
        return item
