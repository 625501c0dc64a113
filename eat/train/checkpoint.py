"""Atomic, self-checking training checkpoints that load into DDP, FSDP2 or a plain module alike.

Layout of ``<run_dir>/step_000123/`` (written as ``.tmp_step_000123/`` and renamed when complete)::

    model.safetensors       whole unwrapped module state dict (student, teacher, decoder ...), rank 0
    optimizer.safetensors   optimizer state tensors, keyed "<param name>/<state name>", rank 0
    optimizer.json          optimizer param groups (by parameter name) and non-tensor state, rank 0
    trainer.json            step, epoch, data position, schedule, counters, rank 0
    config.yaml             the resolved run config, rank 0
    rank_00000.pt ...       every rank's RNG states (torch, cuda, numpy, python) and sampler state
    complete                JSON table of every file with its size and CRC-32, written last

Model and optimizer go through ``torch.distributed.checkpoint.state_dict`` with full, CPU-offloaded state
dicts keyed by parameter names, so the files are the same whether DDP or FSDP2 wrote them. The per-rank
files are plain tensors/lists loaded with ``weights_only=True``; everything else is safetensors or JSON.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import re
import shutil
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from eat.train.dist import DistEnv, any_rank, barrier

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
OPTIM_TENSORS = "optimizer.safetensors"
OPTIM_META = "optimizer.json"
TRAINER_FILE = "trainer.json"
CONFIG_FILE = "config.yaml"
MARKER = "complete"
_STEP_DIR = re.compile(r"^step_(\d+)$")
# Settings an optimizer keeps per group that describe the implementation, not the training state: the
# running optimizer's values win over the checkpoint's (e.g. a fused CUDA run resumed on CPU).
_IMPL_KEYS = ("foreach", "fused", "capturable", "differentiable", "maximize")


class CheckpointError(RuntimeError):
    """A checkpoint directory is incomplete, truncated or unreadable."""


@dataclass
class Loaded:
    """What a checkpoint restores besides model and optimizer."""

    path: Path
    trainer: dict[str, Any]
    rank: dict[str, Any] | None  # None when this rank has no file (resumed on more ranks than saved)


def step_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / f"step_{step:06d}"


def rank_file(rank: int) -> str:
    return f"rank_{rank:05d}.pt"


# ---------------------------------------------------------------------------------------------- RNG


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's torch / CUDA / numpy / python RNG states as tensors and plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state((np_state["kind"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# --------------------------------------------------------------------------------------------- save


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    env: DistEnv,
    trainer_state: dict[str, Any],
    rank_state: dict[str, Any],
    config: dict[str, Any] | None = None,
    keep_last: int = 0,
    protect: Path | None = None,
) -> Path:
    """Write ``step_<step>/`` atomically; every rank must call this (collective under FSDP2).

    ``rank_state`` (e.g. the sampler state) is saved per rank together with the RNG states. ``keep_last``
    > 0 deletes all but the newest ``keep_last`` complete checkpoints afterwards, except ``protect`` (the
    trainer's last checkpoint before non-finite updates began). Leftover ``.tmp_step_*`` folders of saves
    that were killed are removed first. A failed write (disk full, no permission) removes the partial
    folder and raises ``OSError`` naming the file.
    """
    run_dir = Path(run_dir)
    final = step_dir(run_dir, step)
    tmp = run_dir / f".tmp_{final.name}"
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict  # slow import

    model_sd, optim_sd = get_state_dict(
        model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    if env.is_main:
        remove_stale_temps(run_dir)
        tmp.mkdir(parents=True)
    barrier(env)
    error = None
    try:
        _save_torch({**rank_state, "rng": rng_state(env.device)}, tmp / rank_file(env.rank))
        if env.is_main:
            _save_safetensors(_unshare(model_sd), tmp / MODEL_FILE, metadata={"format": "eat-train-v1"})
            tensors, meta = _flatten_optimizer(optim_sd)
            _save_safetensors(tensors, tmp / OPTIM_TENSORS)
            _write_text(tmp / OPTIM_META, json.dumps(meta))
            _write_text(tmp / TRAINER_FILE, json.dumps({**trainer_state, "step": step, "world_size": env.world_size},
                                                       indent=1))
            if config is not None:
                _write_text(tmp / CONFIG_FILE, yaml.safe_dump(config, sort_keys=False))
    except OSError as e:
        error = e
    if any_rank(error is not None, env):
        barrier(env)
        if env.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        if error is not None:
            raise error
        raise OSError(errno.EIO, "another rank failed to write its part of the checkpoint", str(tmp))
    if env.is_main:
        try:
            files = {p.name: {"size": p.stat().st_size, "crc32": file_crc32(p)} for p in sorted(tmp.iterdir())}
            _write_text(tmp / MARKER, json.dumps({"step": step, "files": files}, indent=1))
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(run_dir)
        if keep_last > 0:
            prune_checkpoints(run_dir, keep_last, protect)
    barrier(env)
    return final


def prune_checkpoints(run_dir: str | Path, keep_last: int, protect: Path | None = None) -> list[Path]:
    """Delete all but the newest ``keep_last`` checkpoints, never ``protect``; returns what was deleted."""
    removed = []
    for old in list_checkpoints(run_dir)[keep_last:]:
        if protect is not None and old.resolve() == Path(protect).resolve():
            continue
        shutil.rmtree(old, ignore_errors=True)
        removed.append(old)
    return removed


def remove_stale_temps(run_dir: str | Path) -> list[Path]:
    """Remove ``.tmp_step_*`` folders left by saves that were killed (only one save runs at a time)."""
    run_dir = Path(run_dir)
    stale = sorted(run_dir.glob(".tmp_step_*")) if run_dir.is_dir() else []
    for t in stale:
        shutil.rmtree(t, ignore_errors=True)
    return stale


def file_crc32(path: Path, chunk: int = 1 << 24) -> int:
    """CRC-32 of a file, read in 16 MiB chunks (about 1 s per GB; just written, so from the page cache)."""
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            crc = zlib.crc32(block, crc)
    return crc


def _unshare(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous tensors, cloning any that share storage with an earlier one (safetensors refuses those)."""
    seen: set[int] = set()
    out = {}
    for k, v in sd.items():
        v = v.detach().contiguous()
        ptr = v.untyped_storage().data_ptr()
        if ptr in seen and v.numel() > 0:
            v = v.clone()
        seen.add(ptr)
        out[k] = v
    return out


def _flatten_optimizer(osd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for name, state in osd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{name}/{key}"] = value.detach().contiguous()
            else:
                scalars.setdefault(name, {})[key] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in osd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[str, dict[str, Any]] = {}
    for key, value in tensors.items():
        name, _, sub = key.rpartition("/")
        state.setdefault(name, {})[sub] = value
    for name, values in meta["scalars"].items():
        state.setdefault(name, {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def _save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """``safetensors`` raises its own error type for I/O failures; turn them into ``OSError`` naming the file."""
    try:
        save_file(tensors, path, metadata=metadata)
    except SafetensorError as e:
        text = str(e)
        code = errno.ENOSPC if ("No space" in text or "code: 28" in text) else errno.EIO
        raise OSError(code, os.strerror(code) if code == errno.ENOSPC else text.splitlines()[0], str(path)) from None


def _save_torch(obj: Any, path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def _write_text(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------- load


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """``step_*`` directories under ``run_dir``, newest (highest step) first; unfinished temp dirs excluded."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def find_checkpoint(src: Path) -> Path | None:
    """The ``step_*`` directory to read when ``src`` is one of our checkpoints or run directories (the
    newest complete checkpoint of a run directory); ``None`` when ``src`` is neither. A checkpoint that
    is there but incomplete raises :class:`CheckpointError`."""
    if not src.is_dir():
        return None
    if (src / TRAINER_FILE).is_file() or (src / MARKER).is_file():
        candidates = [src]
    else:
        candidates = list_checkpoints(src)
        if not candidates:
            return None
    errors = []
    for path in candidates:
        try:
            check_complete(path)
            return path
        except CheckpointError as e:
            errors.append(str(e))
    raise CheckpointError(errors[0] if len(candidates) == 1 else f"{src}: no complete checkpoint ({errors[0]})")


def check_complete(path: Path, verify: Iterable[str] | None = None) -> dict[str, Any]:
    """Raise :class:`CheckpointError` unless the marker exists and every listed file has its recorded size;
    the files named in ``verify`` (default: all) must also match their recorded CRC-32 (checkpoints
    written before CRCs were recorded are checked by size only). Returns the marker's file table."""
    marker = path / MARKER
    if not marker.is_file():
        raise CheckpointError(f"{path}: no '{MARKER}' marker (the save did not finish)")
    try:
        files = json.loads(marker.read_text())["files"]
        if not isinstance(files, dict):
            raise ValueError("'files' is not a mapping")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}/{MARKER}: unreadable ({e})") from None
    wanted = set(files) if verify is None else set(verify)
    for name, entry in files.items():
        size, crc = (entry.get("size"), entry.get("crc32")) if isinstance(entry, dict) else (entry, None)
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{f}: missing")
        if f.stat().st_size != size:
            raise CheckpointError(f"{f}: {f.stat().st_size} bytes, expected {size} (truncated?)")
        if crc is not None and name in wanted and file_crc32(f) != crc:
            raise CheckpointError(f"{f}: contents changed since it was saved (CRC-32 mismatch)")
    return files


def read_checkpoint(path: str | Path, env: DistEnv) -> tuple[dict, dict, Loaded]:
    """Read (without applying) the model state, optimizer state and trainer/rank state of one checkpoint.

    Any damage (missing, truncated, changed or foreign file, wrong content) raises :class:`CheckpointError`
    naming the file. The shared files and this rank's file are verified; other ranks' files by size."""
    path = Path(path)
    own = rank_file(env.rank)
    files = check_complete(path, verify=[MODEL_FILE, OPTIM_TENSORS, OPTIM_META, TRAINER_FILE, CONFIG_FILE, own])

    def read(name: str, fn: Callable[[Path], Any]) -> Any:
        try:
            return fn(path / name)
        except Exception as e:  # any decoder's error type: the file is damaged, whatever the library says
            raise CheckpointError(f"{path / name}: unreadable ({type(e).__name__}: {_first_line(e)})") from None

    for name in (MODEL_FILE, OPTIM_TENSORS, OPTIM_META, TRAINER_FILE):
        if name not in files:
            raise CheckpointError(f"{path / name}: missing (not listed in '{MARKER}')")
    model_sd = read(MODEL_FILE, load_file)
    optim_tensors = read(OPTIM_TENSORS, load_file)
    meta = read(OPTIM_META, lambda p: json.loads(p.read_text(encoding="utf-8")))
    trainer = read(TRAINER_FILE, lambda p: json.loads(p.read_text(encoding="utf-8")))
    if not isinstance(trainer, dict) or not isinstance(trainer.get("step"), int):
        raise CheckpointError(f"{path / TRAINER_FILE}: unreadable (no integer 'step')")
    if CONFIG_FILE in files:
        read(CONFIG_FILE, lambda p: yaml.safe_load(p.read_text(encoding="utf-8")))
    optim_sd = read(OPTIM_META, lambda _: _unflatten_optimizer(optim_tensors, meta))
    rank = None
    if (path / own).is_file():
        rank = read(own, lambda p: torch.load(p, map_location="cpu", weights_only=True))
        if not isinstance(rank, dict) or "rng" not in rank:
            raise CheckpointError(f"{path / own}: unreadable (not a rank state)")
    return model_sd, optim_sd, Loaded(path=path, trainer=trainer, rank=rank)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def apply_checkpoint(
    model: nn.Module, optimizer: torch.optim.Optimizer, model_sd: dict, optim_sd: dict
) -> None:
    """Load full state dicts into a plain, DDP or FSDP2 model and its optimizer (every rank calls this).

    The optimizer's hyper-parameters (lr is recomputed each step anyway) come from the checkpoint except for
    implementation switches (fused/foreach/...), which stay as the running optimizer has them.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict  # slow import

    current = optimizer.param_groups
    saved = optim_sd["param_groups"]
    if len(saved) != len(current):
        raise CheckpointError(f"checkpoint has {len(saved)} optimizer groups, this run has {len(current)}")
    for s, c in zip(saved, current, strict=True):
        for key in _IMPL_KEYS:
            if key in c:
                s[key] = c[key]
        if "betas" in s:
            s["betas"] = tuple(s["betas"])
    set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd,
                   options=StateDictOptions(full_state_dict=True, strict=True))


def load_checkpoint(
    target: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    env: DistEnv,
    fallback: bool = True,
) -> Loaded | None:
    """Restore model, optimizer and this rank's RNG from ``target``.

    ``target`` is a run directory (its newest good ``step_*`` is used; with ``fallback`` an incomplete or
    unreadable newest one is skipped with a warning and the previous one tried) or one ``step_*`` directory
    (which must be good). Every rank reads the files (a filesystem all ranks share is assumed) and all ranks
    agree before anything is applied. Returns ``None`` when a run directory holds no checkpoint.
    """
    target = Path(target)
    single = _STEP_DIR.match(target.name) is not None
    candidates = [target] if single else list_checkpoints(target)
    for path in candidates:
        error = None
        try:
            model_sd, optim_sd, loaded = read_checkpoint(path, env)
        except CheckpointError as e:
            error = str(e)
        if any_rank(error is not None, env):
            if single or not fallback:
                raise CheckpointError(error or f"{path}: unreadable on another rank")
            log.warning("skipping checkpoint %s: %s", path, error or "unreadable on another rank")
            continue
        try:
            apply_checkpoint(model, optimizer, model_sd, optim_sd)
        except (RuntimeError, KeyError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"{path}: does not fit this model/optimizer ({first})") from None
        if loaded.rank is not None:
            set_rng_state(loaded.rank["rng"], env.device)
        else:
            log.warning("%s has no %s (saved with %s ranks); RNG starts fresh on this rank",
                        path, rank_file(env.rank), loaded.trainer.get("world_size"))
        return loaded
    if candidates:
        raise CheckpointError(f"{target}: no usable checkpoint among {len(candidates)}")
    return None
