"""Frozen-encoder feature extraction: waveforms or fbanks of any length in, embeddings out.

:class:`FeatureExtractor` wraps an :class:`~eat.model.vit.Encoder` together with the front-end it was
trained with. ``forward`` is the bare encoder on normalised fbanks (all tokens, CLS first: the tensor the
official ``extract_features(..., remove_extra_tokens=False)`` returns). ``extract_features`` is the
user-facing path:

* waveforms (a list of 1-D clips of different lengths, or a padded batch + ``lengths``) at any sample
  rate are resampled to the front-end rate and turned into normalised fbanks; fbanks can be passed
  directly;
* every clip is padded only to a whole number of patch columns (padding frames hold the value silence
  normalises to, as in the official recipe), and a batch of different lengths is padded further with a
  padding mask inside attention, so a clip's features do not depend on what it is batched with;
* clips longer than the training length are cut into windows of that length overlapping by
  ``overlap``; frame/patch embeddings of overlapping windows are averaged, an utterance's CLS token is
  averaged over windows weighted by their number of valid columns, and the poolings of the patch tokens
  pool the merged patch grid (every time column once, however many windows saw it);
* ``layers`` picks block outputs (``-1`` is the last block, i.e. exactly ``forward``'s output);
* ``granularity``: ``utterance`` (one vector per clip: the CLS token or a pooling of the patch tokens,
  any name of :data:`eat.model.pooling.POOLINGS`), ``frame`` (one vector per time column = mean over its
  frequency patches, 160 ms apart for EAT, with the column's centre time) or ``patch`` (every patch token,
  time-major, with its (t, f) grid index).

:meth:`FeatureExtractor.clip_embeddings` is the one-vector-per-clip embedding with the registry's default
(:data:`~eat.model.pooling.DEFAULT_LAYERS` = every block, :data:`~eat.model.pooling.DEFAULT_POOLING` = band
mean+std, concatenated): what ``tools/extract_features.py``, the HEAR scene embedding and
``tools/linear_probe.py`` give by default. ``extract_features`` keeps its own defaults (last block, CLS),
the raw encoder output.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from eat.audio.fbank import FrontendConfig, normalize, num_frames, waveform_to_input
from eat.audio.io import AudioError, check_sample_rate, load_audio, resample, validate_audio
from eat.model.pooling import (
    DEFAULT_LAYERS,
    DEFAULT_POOLING,
    POOLINGS,
    TOKEN_POOLINGS,
    check_poolings,
    layer_spec,
    parse_layers,
    pool_tokens,
    pooled_dim,
)
from eat.model.vit import Encoder

GRANULARITIES = ("utterance", "frame", "patch")
UTTERANCE_POOLING = POOLINGS  # the utterance poolings extract_features accepts: the registry's (eat.model.pooling)


@dataclass
class Features:
    """Result of :meth:`FeatureExtractor.extract_features`.

    ``embeddings``: utterance ``(B, D')`` (``D`` for ``cls`` and ``mean``, see
    :func:`eat.model.pooling.pooled_dim`), frame ``(B, T', D)`` or patch ``(B, T'*F', D)``; when ``layers``
    was a list there is a layer axis after the batch axis (``(B, L, ...)``). ``mask`` (frame/patch):
    ``(B, T')`` / ``(B, T'*F')``, True = padding (the clip is shorter than the longest in the batch).
    ``timestamps`` (frame/patch): centre time in seconds (float64) of each row's time column, ``(B, T')`` /
    ``(B, T'*F')``. ``patch_index`` (patch): ``(T'*F', 2)`` long, the (t, f) grid position of each row.
    ``num_columns``: valid time columns per clip ``(B,)``.
    """

    embeddings: Tensor
    granularity: str
    layers: list[int]
    num_columns: Tensor
    mask: Tensor | None = None
    timestamps: Tensor | None = None
    patch_index: Tensor | None = None


@dataclass
class _Windows:
    """Encoder windows cut from a padded fbank batch (one row per window)."""

    item: Tensor  # clip each window belongs to
    start: Tensor  # first time column of the window within its clip
    cols: Tensor  # valid columns (output)
    enc_cols: Tensor  # columns the encoder sees (== cols unless padding to the full window)


class FeatureExtractor(nn.Module):
    """An encoder plus its front-end settings; see the module docstring."""

    def __init__(self, encoder: Encoder, frontend: FrontendConfig):
        super().__init__()
        if encoder.cfg.num_mel_bins != frontend.num_mel_bins:
            raise ValueError(
                f"encoder expects {encoder.cfg.num_mel_bins} mel bins, front-end makes {frontend.num_mel_bins}"
            )
        self.encoder = encoder
        self.frontend = frontend
        self.eval()

    # ------------------------------------------------------------------ properties
    @property
    def sample_rate(self) -> int:
        return self.frontend.sample_rate

    @property
    def embed_dim(self) -> int:
        return self.encoder.cfg.embed_dim

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    @property
    def num_layers(self) -> int:
        return len(self.encoder.blocks)

    @property
    def pad_value(self) -> float:
        """What a frame of silence (log-mel 0, the official pad value) becomes after normalisation."""
        return float(normalize(torch.tensor(0.0), self.frontend.norm_mean, self.frontend.norm_std))

    @property
    def window_columns(self) -> int:
        """Time columns of one encoder window: the grid of the front-end's training length."""
        return self.encoder.grid(self.frontend.target_length)[0]

    def column_times(self, count: int, device: torch.device | str = "cpu") -> Tensor:
        """Centre (seconds, float64) of time columns ``0..count-1``: the middle of the samples their frames
        span. Computed from integer sample positions and divided once, so the spacing is exact to float64
        rounding on any clip length (float32 seconds drift by ~0.1 ms after an hour)."""
        p, st = self.encoder.cfg.patch_size, self.encoder.cfg.patch_stride[0]
        cfg = self.frontend
        hop = int(cfg.sample_rate * cfg.frame_shift_ms / 1000)  # the fbank's own frame sizes in samples
        win = int(cfg.sample_rate * cfg.frame_length_ms / 1000)
        twice_centre = 2 * st * hop * torch.arange(count, device=device, dtype=torch.int64) + (p - 1) * hop + win
        return twice_centre.to(torch.float64) / (2 * cfg.sample_rate)

    def frames_for_columns(self, cols: Tensor | int) -> Tensor | int:
        """Frames a run of ``cols`` columns spans: ``(cols - 1) * stride + patch``."""
        return (cols - 1) * self.encoder.cfg.patch_stride[0] + self.encoder.cfg.patch_size

    def columns_for_frames(self, frames: Tensor) -> Tensor:
        """Columns needed to cover ``frames`` frames (at least one): the last column may be part padding."""
        return self.encoder.columns_for_frames(frames)

    # ------------------------------------------------------------------ encoder
    def forward(self, fbank: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """Normalised fbank ``(B, T, F)`` or ``(B, 1, T, F)`` -> all output tokens ``(B, E + T'*F', D)``."""
        return self.encoder(fbank, padding_mask)

    def _encode(self, x: Tensor, padding_mask: Tensor | None, layers: list[int]) -> list[Tensor]:
        """Outputs of the blocks in ``layers`` (non-negative indices); the last block's includes the final norm."""
        return self.encoder(x, padding_mask, blocks=layers)

    # ------------------------------------------------------------------ inputs
    def fbank(
        self, audio: Tensor | np.ndarray | Sequence, sample_rate: int | None = None, lengths: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Waveforms -> normalised fbanks ``(B, T, F)`` (padding frames hold :attr:`pad_value`) and valid frames ``(B,)``.

        ``audio``: a 1-D clip, a padded ``(B, S)`` batch (with ``lengths`` in samples) or a list of 1-D
        clips. ``sample_rate`` defaults to the front-end rate; other rates are resampled first.
        """
        waves, lengths = _as_wave_batch(audio, lengths)
        device = self.device
        sr = self.sample_rate if sample_rate is None else check_sample_rate(sample_rate)
        if sr != self.sample_rate:
            # Resampling the padded batch at once equals resampling each clip: both see zeros past the end.
            waves = resample(waves, sr, self.sample_rate)
            lengths = torch.div(lengths * self.sample_rate + sr - 1, sr, rounding_mode="floor")
        waves, lengths = waves.to(device), lengths.to(device)
        cfg = self.frontend
        frames = num_frames(lengths, cfg.sample_rate, cfg.frame_length_ms, cfg.frame_shift_ms)
        if bool((frames <= 0).any()):
            i = int(torch.nonzero(frames <= 0)[0])
            raise ValueError(f"audio clip {i}: {int(lengths[i])} samples, fewer than one {cfg.frame_length_ms} ms "
                             f"frame ({int(cfg.sample_rate * cfg.frame_length_ms / 1000)} samples at "
                             f"{cfg.sample_rate} Hz)")
        full = dataclasses.replace(cfg, target_length=int(frames.max()), crop="head")
        return waveform_to_input(waves, full, lengths), frames

    def _fbank_batch(
        self, x: Tensor | np.ndarray | Sequence, lengths: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Normalised fbank input(s) -> padded ``(B, T, F)`` batch and valid frames ``(B,)``."""
        if isinstance(x, (list, tuple)):
            items = [validate_audio(i, f"fbank input {k}") for k, i in enumerate(x)]
            items = [i.reshape(i.shape[-2], i.shape[-1]) for i in items]
            lengths = torch.tensor([i.shape[0] for i in items])
            x = torch.nn.utils.rnn.pad_sequence(items, batch_first=True)
        x = validate_audio(x, "fbank input")
        if x.dim() == 4 and x.shape[1] == 1:
            x = x[:, 0]
        if x.dim() == 2:
            x = x[None]
        if x.dim() != 3 or x.shape[-1] != self.frontend.num_mel_bins:
            raise ValueError(f"expected fbanks (B, T, {self.frontend.num_mel_bins}), got {tuple(x.shape)}")
        if lengths is None:
            lengths = torch.full((x.shape[0],), x.shape[1])
        lengths = torch.as_tensor(lengths).long().reshape(-1)
        if lengths.shape[0] != x.shape[0] or bool((lengths < 1).any()) or bool((lengths > x.shape[1]).any()):
            raise ValueError(f"lengths must be {x.shape[0]} frame counts in 1..{x.shape[1]}, got {lengths.tolist()}")
        return x.to(self.device), lengths.to(self.device)

    # ------------------------------------------------------------------ extraction
    @torch.no_grad()  # not inference_mode: the outputs may feed a head that is trained with autograd
    def extract_features(
        self,
        audio: Tensor | np.ndarray | Sequence,
        sample_rate: int | None = None,
        layers: int | Sequence[int] = -1,
        granularity: str = "utterance",
        utterance: str = "cls",
        lengths: Tensor | Sequence[int] | None = None,
        is_fbank: bool | None = None,
        overlap: float = 0.5,
        batch_size: int = 16,
        pad_to_window: bool = False,
    ) -> Features:
        """Embeddings of a batch of clips; see the module docstring for what each option does.

        ``audio``: waveforms (1-D, padded ``(B, S)`` + ``lengths`` in samples, or a list of 1-D clips) or
        normalised fbanks (``(B, T, F)``, ``(B, 1, T, F)`` or a list of ``(T, F)``; ``lengths`` in
        frames). ``is_fbank=None`` decides by shape: 3-D/4-D tensors and lists of 2-D arrays are fbanks.
        ``overlap`` is the fraction of a window shared with the next one for clips longer than the
        training length; ``batch_size`` counts encoder windows per forward. ``pad_to_window=True``
        reproduces the official extraction script for short clips: they are padded to the full training
        length and the padding is attended to (outputs still cover only the clip's own columns).
        """
        if granularity not in GRANULARITIES:
            raise ValueError(f"unknown granularity {granularity!r}; choose one of {', '.join(GRANULARITIES)}")
        if utterance not in UTTERANCE_POOLING:
            raise ValueError(f"unknown utterance pooling {utterance!r}; choose from {', '.join(UTTERANCE_POOLING)}")
        if utterance == "cls" and granularity == "utterance" and self.encoder.cfg.num_extra_tokens == 0:
            raise ValueError("this encoder has no CLS token; use utterance='mean' (or another token pooling)")
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        layer_list = self.layer_indices(layers)
        if is_fbank is None:
            is_fbank = _looks_like_fbank(audio)
        if is_fbank:
            fb, frames = self._fbank_batch(audio, None if lengths is None else torch.as_tensor(lengths))
        else:
            fb, frames = self.fbank(audio, sample_rate, None if lengths is None else torch.as_tensor(lengths))

        cols = self.columns_for_frames(frames)
        windows = self._windows(cols, overlap, pad_to_window)
        fb = self._pad_frames(fb, frames, int(self.frames_for_columns(cols.max())))
        outs = self._run_windows(fb, windows, layer_list, batch_size)
        if granularity == "utterance" and utterance in TOKEN_POOLINGS:  # pooled from the merged patch grid
            fp = self.encoder.num_freq_patches
            pad = (torch.arange(int(cols.max()), device=cols.device) >= cols[:, None]).repeat_interleave(fp, dim=1)
            per_layer = [pool_tokens(self._merge(o, windows, cols, "patch", utterance), pad, utterance, fp)
                         for o in outs]
        else:
            per_layer = [self._merge(o, windows, cols, granularity, utterance) for o in outs]
        emb = per_layer[0] if isinstance(layers, int) else torch.stack(per_layer, dim=1)
        result = Features(emb, granularity, layer_list, cols.cpu())
        if granularity != "utterance":
            t_max = int(cols.max())
            fp = self.encoder.num_freq_patches
            col_mask = torch.arange(t_max, device=cols.device) >= cols[:, None]
            times = self.column_times(t_max, cols.device).expand(len(cols), -1)
            if granularity == "frame":
                result.mask, result.timestamps = col_mask, times
            else:
                result.mask = col_mask.repeat_interleave(fp, dim=1)
                result.timestamps = times.repeat_interleave(fp, dim=1)
                t_idx = torch.arange(t_max, device=cols.device).repeat_interleave(fp)
                f_idx = torch.arange(fp, device=cols.device).repeat(t_max)
                result.patch_index = torch.stack([t_idx, f_idx], dim=1)
        return result

    def clip_embeddings(
        self,
        audio: Tensor | np.ndarray | Sequence,
        sample_rate: int | None = None,
        layers: str | int | Sequence[int] = DEFAULT_LAYERS,
        pooling: str = DEFAULT_POOLING,
        batch_size: int = 16,
        **kwargs,
    ) -> Tensor:
        """One vector per clip, ``(B, D')``: the blocks of the layer spec ``layers`` (``"all"``, ``"-1"``,
        ``"0+2"``, or an int / list of ints), each pooled by ``pooling`` (:data:`eat.model.pooling.POOLINGS`),
        concatenated in the spec's order. The defaults are the registry's recommended embedding (every
        block, band mean+std; see :mod:`eat.model.pooling`). ``audio``, ``sample_rate`` and the other
        keyword arguments are :meth:`extract_features`'."""
        (pooling,) = check_poolings(pooling)
        blocks = parse_layers(layer_spec(layers), self.num_layers)
        out = self.extract_features(audio, sample_rate, layers=blocks, granularity="utterance", utterance=pooling,
                                    batch_size=batch_size, **kwargs)
        return out.embeddings.flatten(1)

    def clip_embedding_dim(self, layers: str | int | Sequence[int] = DEFAULT_LAYERS, pooling: str = DEFAULT_POOLING) -> int:
        """Width of :meth:`clip_embeddings`' vectors for ``layers`` and ``pooling``."""
        (pooling,) = check_poolings(pooling)
        blocks = parse_layers(layer_spec(layers), self.num_layers)
        return len(blocks) * pooled_dim(pooling, self.embed_dim, self.encoder.num_freq_patches)

    def layer_indices(self, layers: int | Sequence[int]) -> list[int]:
        """``layers`` (an int or a list, negative = from the end) as block indices; bad indices raise."""
        chosen = [layers] if isinstance(layers, int) else list(layers)
        if not chosen:
            raise ValueError("layers must name at least one block")
        out = []
        for i in chosen:
            if not -self.num_layers <= int(i) < self.num_layers:
                raise ValueError(f"layer {i} out of range for an encoder with {self.num_layers} blocks")
            out.append(int(i) % self.num_layers)
        return out

    def _windows(self, cols: Tensor, overlap: float, pad_to_window: bool) -> _Windows:
        """Windows of at most :attr:`window_columns` columns covering every clip; a long clip's last window
        is moved back to end exactly at the clip's end, so every window of a long clip is full length."""
        wc = self.window_columns
        item, start, count = [], [], []
        for b, c in enumerate(cols.tolist()):
            if c <= wc:
                starts = [0]
            else:
                hop = max(1, round(wc * (1.0 - overlap)))
                starts = list(range(0, c - wc + 1, hop))
                if starts[-1] + wc < c:
                    starts.append(c - wc)
            item += [b] * len(starts)
            start += starts
            count += [min(c, wc)] * len(starts)
        dev = cols.device
        n = torch.tensor(count, device=dev)
        enc = torch.full_like(n, wc) if pad_to_window else n
        return _Windows(torch.tensor(item, device=dev), torch.tensor(start, device=dev), n, torch.maximum(n, enc))

    def _pad_frames(self, fb: Tensor, frames: Tensor, total: int) -> Tensor:
        """Frames past each clip's end (and up to ``total``) set to :attr:`pad_value`."""
        if fb.shape[1] < total:
            fb = torch.nn.functional.pad(fb, (0, 0, 0, total - fb.shape[1]))
        valid = torch.arange(fb.shape[1], device=fb.device) < frames[:, None]
        return torch.where(valid[..., None], fb, torch.full_like(fb[:1, :1, :1], self.pad_value))

    def _run_windows(self, fb: Tensor, win: _Windows, layers: list[int], batch_size: int) -> list[Tensor]:
        """Encoder outputs ``(num_windows, E + T'w*F', D)`` per layer, padded to the longest window."""
        st = self.encoder.cfg.patch_stride[0]
        fp = self.encoder.num_freq_patches
        max_cols = int(win.enc_cols.max())
        outs: list[list[Tensor]] = [[] for _ in layers]
        pad = torch.full_like(fb[:1, :1, :1], self.pad_value)
        for lo in range(0, len(win.item), batch_size):
            sl = slice(lo, lo + batch_size)
            enc_cols = win.enc_cols[sl]
            width = int(enc_cols.max())
            frame_idx = win.start[sl, None] * st + torch.arange(self.frames_for_columns(width), device=fb.device)
            in_window = torch.arange(frame_idx.shape[1], device=fb.device) < self.frames_for_columns(enc_cols)[:, None]
            x = fb[win.item[sl, None], frame_idx.clamp_max(fb.shape[1] - 1)]
            x = torch.where(in_window[..., None], x, pad)  # beyond the clip's padded end: pad value
            col_pad = torch.arange(width, device=fb.device) >= enc_cols[:, None]
            mask = col_pad.repeat_interleave(fp, dim=1) if bool(col_pad.any()) else None
            for k, o in enumerate(self._encode(x, mask, layers)):
                o = torch.nn.functional.pad(o, (0, 0, 0, (max_cols - width) * fp)) if width < max_cols else o
                outs[k].append(o)
        return [torch.cat(o) for o in outs]

    def _merge(self, out: Tensor, win: _Windows, cols: Tensor, granularity: str, utterance: str) -> Tensor:
        """Window outputs of one layer -> per-clip embeddings (see :class:`Features`)."""
        batch = len(cols)
        extra = self.encoder.cfg.num_extra_tokens
        fp = self.encoder.num_freq_patches
        d = out.shape[-1]
        wmax = (out.shape[1] - extra) // fp
        patches = out[:, extra:].reshape(len(out), wmax, fp, d)
        valid = torch.arange(wmax, device=out.device) < win.cols[:, None]  # (W, wmax)
        if granularity == "utterance":
            if utterance == "cls":
                per_window = out[:, 0]
            else:
                per_window = (patches * valid[..., None, None]).sum((1, 2)) / (win.cols[:, None] * fp)
            weight = win.cols.to(out.dtype)[:, None]
            total = out.new_zeros(batch, d).index_add_(0, win.item, per_window * weight)
            norm = out.new_zeros(batch).index_add_(0, win.item, weight[:, 0])
            return total / norm[:, None]
        # frame / patch: average each global column over the windows that contain it
        offsets = torch.cumsum(cols, 0) - cols
        w_idx, j_idx = valid.nonzero(as_tuple=True)
        glob = offsets[win.item[w_idx]] + win.start[w_idx] + j_idx
        total_cols = int(cols.sum())
        acc = out.new_zeros(total_cols, fp, d).index_add_(0, glob, patches[w_idx, j_idx])
        hits = out.new_zeros(total_cols).index_add_(0, glob, torch.ones_like(glob, dtype=out.dtype))
        merged = acc / hits[:, None, None]
        t_max = int(cols.max())
        clip = torch.repeat_interleave(torch.arange(batch, device=out.device), cols)
        local = torch.arange(total_cols, device=out.device) - offsets[clip]
        grid = out.new_zeros(batch, t_max, fp, d)
        grid[clip, local] = merged
        if granularity == "frame":
            return grid.mean(2)
        return grid.reshape(batch, t_max * fp, d)



def _looks_like_fbank(audio: Tensor | np.ndarray | Sequence) -> bool:
    if isinstance(audio, (list, tuple)):
        return len(audio) > 0 and np.ndim(audio[0]) >= 2
    return np.ndim(audio) >= 3


def _as_wave_batch(audio: Tensor | np.ndarray | Sequence, lengths: Tensor | None) -> tuple[Tensor, Tensor]:
    """A padded float32 ``(B, S)`` batch and its lengths from any accepted waveform input."""
    if isinstance(audio, (list, tuple)):
        if not audio:
            raise ValueError("audio: no clips given")
        if all(isinstance(a, (int, float)) for a in audio):  # a plain list of samples is one clip
            audio = [audio]
        clips = [validate_audio(a, f"audio clip {i}").reshape(-1) for i, a in enumerate(audio)]
        return _pad_stack(clips)
    waves = validate_audio(audio)
    if waves.dim() == 1:
        waves = waves[None]
    if waves.dim() != 2:
        raise ValueError(f"audio: expected waveforms (n_samples,) or (n_clips, n_samples), got shape "
                         f"{tuple(waves.shape)}")
    if lengths is None and waves.shape[1] <= 16 < waves.shape[0]:  # e.g. soundfile's (frames, channels)
        raise ValueError(f"audio: shape {tuple(waves.shape)} reads as {waves.shape[0]} clips of {waves.shape[1]} "
                         "samples; it looks like (n_samples, n_channels): pass one channel or the mean over "
                         "channels (e.g. audio.mean(axis=1)), or clips as (n_clips, n_samples)")
    if lengths is None:
        lengths = torch.full((waves.shape[0],), waves.shape[1])
    if isinstance(lengths, (int, float)):
        lengths = [lengths]
    lengths = torch.as_tensor(lengths)
    if lengths.is_complex() or lengths.dtype == torch.bool or (
            lengths.is_floating_point() and not bool((lengths == lengths.round()).all())):
        raise ValueError(f"lengths: expected whole sample counts, got {lengths.tolist()[:8]}")
    lengths = lengths.long().reshape(-1)
    if lengths.shape[0] != waves.shape[0] or bool((lengths < 0).any()) or bool((lengths > waves.shape[1]).any()):
        raise ValueError(f"lengths: expected {waves.shape[0]} sample count(s) in 0..{waves.shape[1]}, got "
                         f"{lengths.tolist()[:8]}")
    return waves, lengths


def _pad_stack(clips: list[Tensor]) -> tuple[Tensor, Tensor]:
    lengths = torch.tensor([c.shape[-1] for c in clips])
    return torch.nn.utils.rnn.pad_sequence(clips, batch_first=True), lengths




def logmel_statistics(clips: Sequence[Tensor], frontend: FrontendConfig) -> Tensor:
    """A no-network baseline embedding: per-mel-bin mean and std over time of each clip's normalised
    fbank, ``(N, 2 * num_mel_bins)``. ``clips`` are 1-D waveforms at ``frontend.sample_rate``."""
    out = []
    for i, wave in enumerate(clips):
        wave = validate_audio(wave, f"clip {i}").reshape(-1)
        frames = int(num_frames(wave.shape[0], frontend.sample_rate, frontend.frame_length_ms, frontend.frame_shift_ms))
        if frames <= 0:
            raise ValueError(f"clip {i}: {wave.shape[0]} samples, fewer than one {frontend.frame_length_ms} ms frame")
        fb = waveform_to_input(wave, dataclasses.replace(frontend, target_length=frames, crop="head"))
        out.append(torch.cat([fb.mean(0), fb.std(0, unbiased=False)]))
    return torch.stack(out) if out else torch.zeros(0, 2 * frontend.num_mel_bins)


def read_clips(paths: Sequence[str | Path], sample_rate: int, workers: int = 4) -> list[Tensor | AudioError]:
    """Decode ``paths`` (mono, resampled to ``sample_rate``) in threads; an unreadable file comes back as
    its :class:`~eat.audio.io.AudioError` (which names the file) instead of raising, so callers can skip it."""

    def one(path: str | Path) -> Tensor | AudioError:
        try:
            return load_audio(path, sample_rate)
        except AudioError as e:
            return e

    if workers <= 1 or len(paths) <= 1:
        return [one(p) for p in paths]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, paths))
