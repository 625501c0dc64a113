"""Tar shards: writing a corpus into them, and reading it back with the file loader's guarantees.

**Layout.** ``OUT_DIR/shard-000000.tar ...`` plus ``OUT_DIR/index.json``. Every clip is two tar members
with the same key (the WebDataset convention, so other tools can read the shards too):
``<key>.flac`` (or ``.wav``, or the source file's own bytes and suffix) and ``<key>.json``
(``{"source": relative path, "samples": n, "labels": [...]}``). The index lists, per shard, its clip
count, total samples and, per clip, the byte offset and size of the audio member's data, the samples at
the stored rate (``clip_samples``) and the labels; the loader reads it instead of scanning the tars. Clip ``i`` of the set
is the ``i``-th clip in index order (shard by shard), and that number keys its randomness exactly as a
manifest index does for the file loader (:func:`eat.data.datasets.sample_generator`).

**Writing** (:func:`write_shards`, CLI ``tools/make_shards.py``): the clip order is shuffled once with a
seed (so every shard is a random sample of the corpus and a small shuffle window suffices when reading),
cut into shards of a fixed clip count (from a target size measured on a sample of clips), and the shards
are written in parallel processes. Each clip is decoded exactly once: a clip that does not decode, has
no samples or has non-finite samples is left out and listed in the index (``skipped``). A shard becomes
visible only complete (``.partial`` then rename, then its ``.json`` record), so an interrupted run
continues with the shards that are missing; ``plan.json`` holds the settings and a hash of the clip
list, and a rerun with different ones is refused.

**Reading.** :class:`ShardSet` reads members by offset (``os.pread`` on file descriptors each process
opens lazily): no per-clip open/stat, no scan. :class:`ShardPretrainDataset` / :class:`ShardLabelledDataset`
are the file datasets with that reader, so items, masks and batch keys are the same.
:class:`ShardSampler` is the resumable sampler with a shard-local epoch order:

1. the shards in a random order drawn from ``(seed, epoch)``, their clips in tar order;
2. a bounded-window shuffle, a pure function of ``(seed, epoch)``: each position ``p`` gets the sort key
   ``p + window * u`` (``u`` uniform in [0, 1)); sorting by it moves no clip by ``window`` places or
   more, so the reads of a rank stay within a few MB of each other in one or two shards;
3. rank ``r`` takes the ``r``-th contiguous block of ``len // world`` positions (the tail of fewer than
   ``world`` clips is dropped, a different one every epoch), so every rank has the same number of clips
   and, with the incomplete batch dropped, the same number of steps. The loader workers take whole
   batches of the rank's block in turn.

The position saved for resuming is the number of clips of its block a rank's training loop has
received (:class:`eat.data.loaders.SkippingLoader` counts them); the workers keep no state, so that one
number per rank fixes what every worker reads next, and a resumed run sees exactly the clips an unbroken
run would have seen, even with a different ``num_workers``.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import io
import json
import math
import os
import random
import signal
import tarfile
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import soundfile
import torch

from eat.audio.fbank import FrontendConfig
from eat.audio.io import AudioError, decode_audio_bytes, load_audio
from eat.data.datasets import LabelledDataset, MaskConfig, PretrainDataset, Skipped, check_clip
from eat.data.loaders import DEFAULT_MAX_BAD_CLIPS, ResumableDistributedSampler, SkippingLoader, build_loader
from eat.data.manifest import LabelledItem, LabelSet, ManifestError, read_manifest

INDEX_NAME = "index.json"
PLAN_NAME = "plan.json"
FORMAT_VERSION = 1
MAX_OPEN_SHARDS = 64  # per process; a rank's window touches one or two shards at a time
AudioFormat = Literal["flac", "wav", "original"]


class ShardError(ManifestError):
    """A shard folder, index or plan is missing, malformed or does not match; the message names the file."""


# ------------------------------------------------------------------------------------------ writing


@dataclass(frozen=True)
class Clip:
    """One clip to write: where it is, what the shard records call it, its labels (empty: unlabelled)."""

    path: Path
    name: str
    labels: tuple[int, ...] = ()


def clips_from_manifest(path: str | Path) -> list[Clip]:
    """The clips of a tsv manifest, unlabelled, named by their relative paths."""
    man = read_manifest(path)
    return [Clip(man.root / rel, rel) for rel, _ in man.entries]


def clips_from_labels(labels: LabelSet) -> list[Clip]:
    """The clips of a label set, named by their paths."""
    return [Clip(Path(it.path), str(it.path), tuple(it.labels)) for it in labels.items]


def encode_clip(clip: Clip, audio: AudioFormat, sample_rate: int) -> tuple[bytes, str, int] | str:
    """``(audio bytes, member suffix, samples at sample_rate)`` for ``clip``, or why it cannot be used.

    The clip is decoded once (resampled to ``sample_rate``, mono): that checks it and gives the sample
    count. ``flac`` / ``wav`` store that signal as 16-bit PCM (samples beyond [-1, 1] clip);
    ``original`` stores the file's own bytes, which the reader decodes and resamples as the file loader
    does.
    """
    try:
        wave = load_audio(clip.path, sample_rate=sample_rate)
    except AudioError as e:
        return e.reason
    if audio == "original":
        return clip.path.read_bytes(), clip.path.suffix.lstrip(".").lower() or "bin", wave.numel()
    buf = io.BytesIO()
    fmt = "FLAC" if audio == "flac" else "WAV"
    soundfile.write(buf, wave.numpy(), sample_rate, format=fmt, subtype="PCM_16")
    return buf.getvalue(), audio, wave.numel()


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> int:
    """Append one member (fixed mtime/owner, so equal input gives equal bytes); return its data offset."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))
    return tar.offset - math.ceil(len(data) / tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def shard_name(i: int) -> str:
    return f"shard-{i:06d}.tar"


def write_one_shard(out_dir: Path, shard: int, first_key: int, clips: Sequence[Clip], audio: AudioFormat,
                    sample_rate: int, on_clip: Callable[[], None] | None = None) -> dict[str, Any]:
    """Write ``shard_name(shard)`` from ``clips`` (keys counted from ``first_key``) and its record;
    ``on_clip()`` is called after each clip (progress).

    The tar is written as ``.partial`` and renamed when complete; the record ``<shard>.json`` (what the
    index is made of) follows atomically, so a shard with a record is whole.
    """
    final = out_dir / shard_name(shard)
    partial = final.with_suffix(".tar.partial")
    rec: dict[str, Any] = {"file": final.name, "offsets": [], "sizes": [], "samples": [], "labels": [],
                           "keys": [], "skipped": []}
    with tarfile.open(partial, "w", format=tarfile.USTAR_FORMAT) as tar:
        for j, clip in enumerate(clips):
            key = f"{first_key + j:09d}"
            got = encode_clip(clip, audio, sample_rate)
            if on_clip is not None:
                on_clip()
            if isinstance(got, str):
                rec["skipped"].append([clip.name, got])
                continue
            data, suffix, n = got
            rec["offsets"].append(_add_member(tar, f"{key}.{suffix}", data))
            rec["sizes"].append(len(data))
            rec["samples"].append(n)
            rec["labels"].append(list(clip.labels))
            rec["keys"].append(f"{key}.{suffix}")
            meta = {"source": clip.name, "samples": n, "labels": list(clip.labels)}
            _add_member(tar, f"{key}.json", json.dumps(meta).encode())
    with open(partial, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(partial, final)
    rec["bytes"] = final.stat().st_size
    _write_json_atomic(out_dir / f"{final.name}.json", rec)
    return rec


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, separators=(",", ":")))
    os.replace(tmp, path)


def parse_size(text: str) -> int:
    """``"1G"``, ``"500M"``, ``"64k"`` or plain bytes -> bytes (powers of 1024)."""
    t = text.strip().upper().removesuffix("B")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(t[-1:], 1)
    try:
        value = float(t[:-1] if scale > 1 else t)
    except ValueError:
        raise ValueError(f"cannot read size {text!r} (use e.g. 1G, 500M or bytes)") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"size must be a positive number of bytes, got {text!r}")
    return int(value * scale)


def estimate_clips_per_shard(clips: Sequence[Clip], audio: AudioFormat, sample_rate: int, target_bytes: int,
                             probe: int = 32, seed: int = 0) -> int:
    """Clips per shard for ``target_bytes``, from the encoded size of up to ``probe`` clips drawn at random."""
    picks = random.Random(seed).sample(range(len(clips)), min(probe, len(clips)))
    sizes = [len(got[0]) + 2 * tarfile.BLOCKSIZE for got in
             (encode_clip(clips[i], audio, sample_rate) for i in picks) if not isinstance(got, str)]
    if not sizes:
        raise ShardError(f"none of {len(picks)} clips drawn to size the shards could be read "
                         f"(first: {clips[picks[0]].path})")
    return max(1, round(target_bytes / (sum(sizes) / len(sizes))))


@dataclass
class WriteResult:
    index_path: Path
    clips: int
    shards: int
    skipped: list[tuple[str, str]]
    resumed_shards: int


def _clip_list_hash(clips: Sequence[Clip]) -> str:
    h = hashlib.sha256()
    for c in clips:
        h.update(f"{c.path}\t{','.join(map(str, c.labels))}\n".encode())
    return h.hexdigest()


_shared: Any = None  # in writer pool processes: (clips written, stop flag), shared with the parent


def _count_clip() -> None:
    done, stop = _shared
    if stop.value:  # the parent was interrupted: leave this shard unfinished (.partial, redone next run)
        os._exit(130)
    with done.get_lock():
        done.value += 1


def _shard_job(args: tuple) -> dict[str, Any]:
    return write_one_shard(*args, on_clip=_count_clip)


def _init_writer_process(done: Any, stop: Any) -> None:
    """Pool processes: one torch thread each, a shared counter of clips written for the parent's progress
    line; Ctrl-C is the parent's to handle: it raises the stop flag, and they exit at the next clip."""
    global _shared
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)
    _shared = (done, stop)


def write_shards(
    clips: Sequence[Clip],
    out_dir: str | Path,
    audio: AudioFormat = "flac",
    sample_rate: int = 16000,
    target_bytes: int = 1 << 30,
    clips_per_shard: int = 0,
    workers: int = 1,
    seed: int = 0,
    shuffle: bool = True,
    classes: Sequence[str] | None = None,
    multi_label: bool = False,
    source: str = "",
    progress: Callable[[int, int], None] | None = None,
) -> WriteResult:
    """Write ``clips`` as tar shards + ``index.json`` under ``out_dir``; resumes a run interrupted there.

    ``clips_per_shard`` (0: sized from ``target_bytes``) fixes the cut. ``progress(clips_done, total)``
    is called as clips are written (at least twice a second with several processes). Raises :class:`ShardError` when ``out_dir`` holds a plan made with
    other settings or clips.
    """
    if audio not in ("flac", "wav", "original"):
        raise ShardError(f"unknown audio format {audio!r}; choose flac, wav or original")
    if not clips:
        raise ShardError("no clips to write")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    order = list(range(len(clips)))
    if shuffle:
        random.Random(seed).shuffle(order)
    ordered = [clips[i] for i in order]
    settings = {"version": FORMAT_VERSION, "audio": audio, "sample_rate": sample_rate, "seed": seed,
                "shuffle": shuffle, "clips": len(clips), "clip_list_sha256": _clip_list_hash(clips),
                "classes": list(classes) if classes is not None else None, "multi_label": multi_label}
    plan_path = out / PLAN_NAME
    if plan_path.is_file():
        plan = _read_json(plan_path)
        old = {k: plan.get(k) for k in settings}
        if old != settings:
            diff = ", ".join(f"{k}: {old[k]!r} -> {settings[k]!r}" for k in settings if old[k] != settings[k]
                             and k != "clip_list_sha256") or "the clip list differs"
            raise ShardError(f"{plan_path}: this folder holds shards made with other settings ({diff}); "
                             "use a new OUT_DIR or delete it")
        per = int(plan["clips_per_shard"])
    else:
        per = clips_per_shard or estimate_clips_per_shard(ordered, audio, sample_rate, target_bytes, seed=seed)
        _write_json_atomic(plan_path, {**settings, "clips_per_shard": per, "source": source})
    n_shards = math.ceil(len(ordered) / per)
    records: dict[int, dict[str, Any]] = {}
    for s in range(n_shards):
        rec_path = out / f"{shard_name(s)}.json"
        if rec_path.is_file() and (out / shard_name(s)).is_file():
            try:
                rec = _read_json(rec_path)
            except ShardError:  # e.g. cut short by a crash: write the shard again
                continue
            if isinstance(rec, dict) and rec.get("bytes") == (out / shard_name(s)).stat().st_size:
                records[s] = rec
    resumed = len(records)
    todo = [(out, s, s * per, ordered[s * per:(s + 1) * per], audio, sample_rate)
            for s in range(n_shards) if s not in records]
    done_clips = sum(min(per, len(ordered) - s * per) for s in records)
    if progress:
        progress(done_clips, len(ordered))
    if workers > 1 and len(todo) > 1:
        import multiprocessing as mp
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
        from concurrent.futures.process import BrokenProcessPool

        ctx = mp.get_context()
        counter, stop = ctx.Value("q", 0), ctx.Value("b", 0)
        pool = ProcessPoolExecutor(min(workers, len(todo)), ctx, _init_writer_process, (counter, stop))
        try:
            pending = {pool.submit(_shard_job, job) for job in todo}
            while pending:
                done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                for future in done:
                    rec = future.result()
                    records[int(rec["file"][6:12])] = rec
                if progress:
                    progress(done_clips + counter.value, len(ordered))
        except BrokenProcessPool:
            raise ShardError(f"{out}: a writer process died (killed, or out of memory); finished shards are "
                             "kept, run the same command again to continue") from None
        except BaseException:  # e.g. KeyboardInterrupt: stop the writers at their next clip
            stop.value = 1
            raise
        finally:
            pool.shutdown(wait=stop.value == 1, cancel_futures=True)
    else:
        def one_clip() -> None:
            nonlocal done_clips
            done_clips += 1
            if progress:
                progress(done_clips, len(ordered))

        for job in todo:
            records[job[1]] = write_one_shard(*job, on_clip=one_clip)
    index = {"version": FORMAT_VERSION, "audio": audio, "sample_rate": sample_rate, "source": source,
             "classes": settings["classes"], "multi_label": multi_label, "shards": [], "skipped": []}
    for s in range(n_shards):
        rec = records[s]
        index["skipped"].extend(rec["skipped"])
        if not rec["keys"]:
            continue
        index["shards"].append({"file": rec["file"], "clips": len(rec["keys"]), "samples": sum(rec["samples"]),
                                "bytes": rec["bytes"], "keys": rec["keys"], "offsets": rec["offsets"],
                                "sizes": rec["sizes"], "clip_samples": rec["samples"], "labels": rec["labels"]})
    index["clips"] = sum(sh["clips"] for sh in index["shards"])
    if not index["clips"]:
        raise ShardError(f"none of the {len(clips)} clips could be read (first: {index['skipped'][0]})")
    _write_json_atomic(out / INDEX_NAME, index)
    return WriteResult(out / INDEX_NAME, index["clips"], len(index["shards"]),
                       [tuple(x) for x in index["skipped"]], resumed)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ShardError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ShardError(f"{path}: cannot read ({e})") from None


# ------------------------------------------------------------------------------------------ reading


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class ShardSet:
    """The clips of a shard folder, read by offset. ``len()`` and ``path(i)`` (a name for messages,
    ``<dir>/shard-000003.tar:000001234.flac``) make it usable where a manifest is expected.

    Per-clip tables are numpy arrays (a few bytes per clip, shared copy-on-write by forked workers).
    """

    def __init__(self, path: str | Path):
        p = Path(path)
        self.index_path = p / INDEX_NAME if p.is_dir() else p
        self.root = self.index_path.parent
        with _no_gc():  # millions of small objects: the cyclic GC would rescan them all (3x slower)
            self._load(_read_json(self.index_path))

    def _load(self, idx: Any) -> None:
        if not isinstance(idx, dict) or idx.get("version") != FORMAT_VERSION or "shards" not in idx:
            raise ShardError(f"{self.index_path}: not a shard index of version {FORMAT_VERSION} "
                             "(write it with tools/make_shards.py)")
        try:
            shards = idx["shards"]
            self.files = [str(sh["file"]) for sh in shards]
            self.shard_clips = np.array([int(sh["clips"]) for sh in shards], dtype=np.int64)
            self.shard_of = np.repeat(np.arange(len(shards), dtype=np.int32), self.shard_clips)
            self.offsets = np.concatenate([np.asarray(sh["offsets"], dtype=np.int64) for sh in shards])
            self.sizes = np.concatenate([np.asarray(sh["sizes"], dtype=np.int64) for sh in shards])
            self.samples = np.concatenate([np.asarray(sh["clip_samples"], dtype=np.int64) for sh in shards])
            keys = [k.split(".", 1) for sh in shards for k in sh["keys"]]
            self.suffixes = sorted({suffix for _, suffix in keys})
            code = {suffix: j for j, suffix in enumerate(self.suffixes)}
            # numbers, not 2 M strings: worker processes share these pages instead of copying them
            self.key_ids = np.array([int(k) for k, _ in keys], dtype=np.int64)
            self.key_suffix = np.array([code[suffix] for _, suffix in keys], dtype=np.int16)
            counts = [len(lab) for sh in shards for lab in sh["labels"]]
            self.label_ptr = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])  # clip i: flat[ptr[i]:ptr[i+1]]
            self.label_flat = np.array([c for sh in shards for lab in sh["labels"] for c in lab], dtype=np.int32)
            self.sample_rate = int(idx["sample_rate"])
            self.audio = str(idx["audio"])
        except (KeyError, TypeError, ValueError) as e:
            raise ShardError(f"{self.index_path}: malformed index ({type(e).__name__}: {e})") from None
        if not (len(self.offsets) == len(self.sizes) == len(self.samples) == len(counts) == len(self.key_ids)
                == int(self.shard_clips.sum())) or not len(self.key_ids):
            raise ShardError(f"{self.index_path}: malformed index (per-clip tables disagree with the clip counts)")
        self.classes: list[str] | None = idx.get("classes")
        self.multi_label = bool(idx.get("multi_label", False))
        self.skipped_when_written = [tuple(x) for x in idx.get("skipped", [])]
        self._paths = [str(self.root / f) for f in self.files]
        self._fds: OrderedDict[int, int] = OrderedDict()
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.key_ids)

    def labels(self, i: int) -> tuple[int, ...]:
        """Class indices of clip ``i`` (empty for unlabelled shards)."""
        return tuple(self.label_flat[self.label_ptr[i]:self.label_ptr[i + 1]].tolist())

    def key(self, i: int) -> str:
        """The tar member name of clip ``i``'s audio, e.g. ``000001234.flac``."""
        return f"{self.key_ids[i]:09d}.{self.suffixes[self.key_suffix[i]]}"

    def path(self, i: int) -> str:
        return f"{self._paths[self.shard_of[i]]}:{self.key(i)}"

    def _fd(self, shard: int) -> int:
        """An open descriptor of ``shard`` in this process; at most ``MAX_OPEN_SHARDS`` stay open."""
        if self._pid != os.getpid():  # a forked worker: open its own descriptors (the parent's stay open)
            self._fds, self._pid = OrderedDict(), os.getpid()
        fd = self._fds.get(shard)
        if fd is None:
            if len(self._fds) >= MAX_OPEN_SHARDS:
                os.close(self._fds.popitem(last=False)[1])
            fd = self._fds[shard] = os.open(self._paths[shard], os.O_RDONLY)
        else:
            self._fds.move_to_end(shard)
        return fd

    def read_bytes(self, i: int) -> bytes:
        """The stored audio bytes of clip ``i`` (``OSError`` when the shard is missing or cut short)."""
        size = int(self.sizes[i])
        data = os.pread(self._fd(int(self.shard_of[i])), size, int(self.offsets[i]))
        if len(data) != size:
            raise OSError(f"shard ends {size - len(data)} bytes into this member (truncated file)")
        return data

    def read(self, i: int, frontend: FrontendConfig) -> torch.Tensor | Skipped:
        """Clip ``i`` decoded at ``frontend.sample_rate``, or a :class:`Skipped` saying why it is unusable."""
        name = self.path(i)
        try:
            wave = decode_audio_bytes(self.read_bytes(i), name, frontend.sample_rate)
        except OSError as e:
            return Skipped(name, f"cannot read ({e})")
        except AudioError as e:
            return Skipped(name, e.reason)
        return check_clip(wave, name, frontend)

    def label_set(self) -> ShardLabelSet:
        """The clips as a :class:`LabelSet` (paths are the member names); needs a labelled index."""
        if not self.classes:
            raise ShardError(f"{self.index_path}: these shards carry no labels (write them from a labelled set)")
        with _no_gc():
            return self._label_set()

    def _label_set(self) -> ShardLabelSet:
        columns = (self.shard_of.tolist(), self.key_ids.tolist(), self.key_suffix.tolist())
        names = [f"{self._paths[s]}:{k:09d}.{self.suffixes[x]}" for s, k, x in zip(*columns, strict=True)]
        flat, ptr = self.label_flat.tolist(), self.label_ptr.tolist()
        labels = [tuple(flat[a:b]) for a, b in zip(ptr[:-1], ptr[1:], strict=True)]
        return ShardLabelSet([LabelledItem(Path(n), lab) for n, lab in zip(names, labels, strict=True)],
                             list(self.classes), self.multi_label, self)

    def __getstate__(self) -> dict[str, Any]:  # descriptors do not travel to spawned workers
        return {**self.__dict__, "_fds": OrderedDict(), "_pid": -1}


@dataclass
class ShardLabelSet(LabelSet):
    """A :class:`LabelSet` read from shards; ``shards`` is where its clips are."""

    shards: ShardSet | None = None


def labelled_dataset(labels: LabelSet, frontend: FrontendConfig, **kwargs: Any) -> LabelledDataset:
    """The dataset for a label set: read from its shards when it came from shards, else from files."""
    if isinstance(labels, ShardLabelSet) and labels.shards is not None:
        return ShardLabelledDataset(labels.shards, frontend, labels=labels, **kwargs)
    return LabelledDataset.from_labels(labels, frontend, **kwargs)


class ShardPretrainDataset(PretrainDataset):
    """:class:`~eat.data.datasets.PretrainDataset` over a :class:`ShardSet` (same items and keys)."""

    def __init__(self, shards: ShardSet | str | Path, frontend: FrontendConfig, mask_cfg: MaskConfig | None = None,
                 return_waveform: bool = False, seed: int = 0, max_bad_fraction: float = 0.01):
        self.shards = shards if isinstance(shards, ShardSet) else ShardSet(shards)
        super().__init__(self.shards, frontend, mask_cfg, return_waveform, seed, max_bad_fraction)

    def read(self, index: int) -> torch.Tensor | Skipped:
        return self.shards.read(index, self.frontend)


class ShardLabelledDataset(LabelledDataset):
    """:class:`~eat.data.datasets.LabelledDataset` over a labelled :class:`ShardSet`."""

    def __init__(self, shards: ShardSet | str | Path, frontend: FrontendConfig, labels: LabelSet | None = None,
                 **kwargs: Any):
        """``labels``: the set's :meth:`ShardSet.label_set` when the caller already made it."""
        self.shards = shards if isinstance(shards, ShardSet) else ShardSet(shards)
        labels = labels if labels is not None else self.shards.label_set()
        super().__init__(labels.items, frontend, labels.num_classes, labels.multi_label, **kwargs)

    def read(self, index: int) -> torch.Tensor | Skipped:
        return self.shards.read(index, self.frontend)


class ShardSampler(ResumableDistributedSampler):
    """Shard-local epochs (see the module docstring): shards in a ``(seed, epoch)`` order, a bounded
    ``window`` shuffle, one contiguous block per rank. Resumes like its base class.

    ``shuffle=False`` (evaluation) keeps the index order; ``drop_last=False`` pads the last rank's block
    with the epoch's first clips, as the base class does.
    """

    def __init__(self, shards: ShardSet, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = True, window: int = 4096):
        if window < 1:
            raise ValueError(f"shuffle window must be >= 1, got {window}")
        self.shard_clips = torch.as_tensor(shards.shard_clips)
        self.window = window
        super().__init__(len(shards), num_replicas, rank, shuffle, seed, drop_last)

    def epoch_order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.num_items)
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        starts = torch.cumsum(self.shard_clips, 0) - self.shard_clips
        perm = torch.randperm(len(self.shard_clips), generator=g)
        order = torch.cat([torch.arange(int(starts[s]), int(starts[s] + self.shard_clips[s])) for s in perm.tolist()])
        keys = torch.arange(self.num_items, dtype=torch.float64)
        keys += self.window * torch.rand(self.num_items, generator=g, dtype=torch.float64)
        return order[torch.sort(keys, stable=True).indices]

    def rank_order(self) -> torch.Tensor:
        order = self.epoch_order()
        per = self.per_rank
        if per * self.num_replicas > order.numel():
            order = order.repeat(math.ceil(per * self.num_replicas / order.numel()))
        return order[self.rank * per:(self.rank + 1) * per]

    def state_dict(self) -> dict[str, int]:
        return {**super().state_dict(), "window": self.window, "shards": len(self.shard_clips)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        for key, mine in (("window", self.window), ("shards", len(self.shard_clips))):
            if key in state and state[key] != mine:
                raise ValueError(f"sampler state has {key}={state[key]} but this sampler has {mine}")
        if "shards" not in state:
            raise ValueError("the saved data position is a file loader's, not a shard loader's")
        super().load_state_dict(state)


def build_shard_loader(
    dataset: ShardPretrainDataset | ShardLabelledDataset,
    batch_size: int,
    num_replicas: int = 1,
    rank: int = 0,
    seed: int = 0,
    num_workers: int = 0,
    train: bool = True,
    window: int = 4096,
    pin_memory: bool | None = None,
    prefetch_factor: int | None = None,
    max_bad_fraction: float | None = None,
    limit_name: str = "data.max_bad_fraction",
    max_bad_clips: int = DEFAULT_MAX_BAD_CLIPS,
) -> SkippingLoader:
    """The file loader (:func:`eat.data.loaders.build_loader`) over shards: same batches, bad-file
    policy, ``set_epoch`` / ``state_dict`` / ``load_state_dict``. ``train=False``: index order, nothing
    dropped (the last rank's block padded as with the file loader)."""
    sampler = ShardSampler(dataset.shards, num_replicas, rank, shuffle=train, seed=seed, drop_last=train,
                           window=window)
    return build_loader(dataset, sampler, batch_size, num_workers, train, pin_memory, prefetch_factor,
                        max_bad_fraction, limit_name, max_bad_clips)


def iter_tar_members(path: str | Path) -> Iterator[tuple[str, bytes]]:
    """``(name, data)`` of every regular member of a tar, in order (for checks and tools)."""
    with tarfile.open(path, "r") as tar:
        for info in tar:
            if info.isfile():
                f = tar.extractfile(info)
                yield info.name, f.read() if f is not None else b""


__all__ = [
    "Clip",
    "ShardError",
    "ShardLabelSet",
    "ShardLabelledDataset",
    "ShardPretrainDataset",
    "ShardSampler",
    "ShardSet",
    "build_shard_loader",
    "clips_from_labels",
    "clips_from_manifest",
    "encode_clip",
    "iter_tar_members",
    "labelled_dataset",
    "parse_size",
    "write_shards",
]
