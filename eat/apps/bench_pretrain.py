"""Benchmark the EAT pretraining step: clips/s, where the time goes, MFU, peak memory.

The timed step is the trainer's own (``Trainer.train_step``: bf16 autocast, forward, backward, clipping,
fused AdamW, the EMA hook), built by ``eat.train`` from the same configs a run uses (``--sdpa-backend``,
``--cudnn-benchmark`` and ``--compile`` set ``train.sdpa_backend``, ``train.cudnn_benchmark`` and
``train.compile``), on synthetic input already on the device (or, with ``--loader``, on real batches from a
manifest). Three passes:

1. warm-up (compilation, cuDNN/cuBLAS autotuning), not timed;
2. ``--steps`` timed steps without any host synchronisation inside the loop (one sync at each end);
3. an instrumented pass: hooks put timestamps (CUDA events, or ``perf_counter`` on CPU) at the phase
   boundaries of a few steps, each followed by a sync: teacher, student forward + backward, decoder
   forward + backward, optimizer (clipping + AdamW) + EMA, and the rest (targets, masks, loss).

``--reference`` also times an "official-style" step in the same process: fairseq-like fp16 autocast on
CUDA (fp32 on CPU), ``train.sdpa_backend=math`` (a stand-in for the hand-written attention),
``optim.implementation=forloop`` (AdamW without fused or foreach kernels; the host checks the gradient
norm), a per-parameter Python EMA loop, no compilation; everything else is the same trainer step, so the
ratio measures exactly those choices.

``--loader MANIFEST`` measures the input pipeline through ``PretrainDataset`` + ``build_loader``:
clips/s of the workers alone (decode + fbank in the workers, and decode only), of the batched fbank on
the device, and of training steps fed by the loader.

    python tools/bench_pretrain.py --preset base --batch 12 --clones 16 --compile --sdpa-backend flash \\
        --json bench_base_flash.json
    python tools/bench_pretrain.py --preset tiny --steps 5 --reference          # CPU smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from eat.apps.bench_common import (
    Clock,
    RepeatBatch,
    add_step_options,
    bench_main,
    count_host_syncs,
    machine,
    peak_memory,
    rate,
    reset_peak_memory,
    resolve_device,
    timed_loop,
)
from eat.audio.fbank import FrontendConfig, waveform_to_input
from eat.cli import check_workers, cli_main
from eat.config import ConfigError
from eat.data import ManifestError, MaskConfig, PretrainDataset, ResumableDistributedSampler, build_loader
from eat.data.datasets import wave_length
from eat.data.loaders import available_cores
from eat.model.eat import EATConfig, EATModel, eat_config
from eat.model.masking import inverse_block_mask
from eat.train.dist import DistEnv
from eat.train.flops import grid, pretrain_flops
from eat.train.metrics_log import peak_flops
from eat.train.optim import OptimConfig, param_groups
from eat.train.pretrain import PretrainBatchPrep
from eat.train.trainer import TrainConfig, Trainer, check_sdpa_backend

# ------------------------------------------------------------------------------------------ the step


@dataclasses.dataclass
class StepSetup:
    """Everything a benchmark needs to run training steps: the trainer and its batch stream."""

    trainer: Trainer
    model: EATModel
    batches: Iterator[Any]
    fp16: bool  # the reference on CUDA: the step under fairseq-style fp16 autocast
    tmp: tempfile.TemporaryDirectory

    def step(self) -> None:
        if self.fp16:
            with torch.autocast("cuda", dtype=torch.float16):
                self.trainer.train_step(next(self.batches))
        else:
            self.trainer.train_step(next(self.batches))

    def close(self) -> None:
        self.batches.close()
        self.trainer.logger.close()
        self.tmp.cleanup()


def build_step(args: argparse.Namespace, device: torch.device, data: Any, frontend: FrontendConfig,
               reference: bool = False) -> StepSetup:
    """A trainer for a fresh model, built from the same configs a run uses (``reference``: official style)."""
    torch.manual_seed(args.seed)
    model = EATModel(model_config(args))
    tmp = tempfile.TemporaryDirectory(prefix="eat-bench-")
    train_cfg = TrainConfig(out_dir=tmp.name, max_steps=10**9, device=device.type,
                            precision="fp32" if reference else args.dtype,
                            sdpa_backend="math" if reference else args.sdpa_backend,
                            cudnn_benchmark=args.cudnn_benchmark, compile=args.compile and not reference,
                            seed=args.seed, log_every=10**9, save_every=0, resume="none", tensorboard=False,
                            check_weights=False)
    # the reference: per-parameter AdamW, the host checks the gradient norm before every update (fairseq)
    optim_cfg = OptimConfig(implementation="forloop") if reference else OptimConfig()
    if reference:
        model.after_optimizer_step = python_ema(model)
    no_decay = model.no_weight_decay()

    def groups(m: nn.Module) -> list[dict]:
        return param_groups(m, optim_cfg.weight_decay, optim_cfg.decay_all, no_decay)

    env = DistEnv(rank=0, world_size=1, local_rank=0, device=device)
    trainer = Trainer(model, data, train_cfg, optim_cfg, env, groups, prepare=PretrainBatchPrep(frontend))
    # fairseq's fp16 on CUDA (its dynamic loss scaling costs nothing measurable)
    return StepSetup(trainer, model, trainer.batches(), reference and device.type == "cuda", tmp)


def python_ema(model: EATModel) -> Callable[[int], None]:
    """The official EMA: one multiply and one add per parameter in a Python loop."""

    @torch.no_grad()
    def update(step: int) -> None:
        decay = model.ema_decay_at(step)
        for t, s in zip(model.teacher.parameters(), model.student.parameters(), strict=True):
            if s.requires_grad:
                t.mul_(decay).add_(s, alpha=1 - decay)
            else:
                t.copy_(s)

    return update


def model_config(args: argparse.Namespace) -> EATConfig:
    cfg = eat_config(args.preset)
    return dataclasses.replace(cfg, clone_batch=args.clones or cfg.clone_batch)


# ------------------------------------------------------------------------------------------ phase split


class PhaseMarks:
    """Hooks that timestamp the phases of a training step (instrumented pass only; removed afterwards).

    Marks: model forward start; teacher, student and decoder forward start/end; end of the forward;
    decoder backward start/end (gradients of its output / of its input); end of the backward (the patch
    embedding's weight gradient, the last one accumulated); end of AdamW; EMA start/end.
    """

    def __init__(self, setup: StepSetup, clock: Clock):
        self.clock, self.setup = clock, setup
        self.marks: dict[str, Any] = {}
        model, trainer = setup.model, setup.trainer
        self.handles = [model.register_forward_pre_hook(self._pre("start")),
                        model.register_forward_hook(self._post("forward_end"))]
        for name in ("teacher", "student", "decoder"):
            module = getattr(model, name)
            self.handles.append(module.register_forward_pre_hook(self._pre(f"{name}_start")))
            self.handles.append(module.register_forward_hook(self._post(f"{name}_end")))
        self.handles.append(model.decoder.register_forward_pre_hook(self._grad_of_input("decoder_bwd_end")))
        self.handles.append(model.decoder.register_forward_hook(self._grad_of_output("decoder_bwd_start")))
        self.handles.append(model.student.patch_embed.weight.register_post_accumulate_grad_hook(
            lambda p: self._mark("backward_end")))
        self.handles.append(trainer.optimizer.register_step_post_hook(
            lambda opt, a, k: self._mark("optimizer_end")))
        self.own_hook = "after_optimizer_step" in vars(model)  # the reference's Python EMA
        self.hook = model.after_optimizer_step

        def ema(step: int) -> None:
            self._mark("ema_start")
            self.hook(step)
            self._mark("ema_end")

        model.after_optimizer_step = ema  # the trainer looks the hook up at every update

    def _mark(self, name: str) -> None:
        self.marks[name] = self.clock.mark()

    def _pre(self, name: str):
        def hook(module, args):
            self._mark(name)
        return hook

    def _post(self, name: str):
        def hook(module, args, output):
            self._mark(name)
        return hook

    def _grad_of_input(self, name: str):
        def hook(module, args):
            if args[0].requires_grad:
                args[0].register_hook(lambda grad: self._mark(name))
        return hook

    def _grad_of_output(self, name: str):
        def hook(module, args, output):
            if output.requires_grad:
                output.register_hook(lambda grad: self._mark(name))
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        if self.own_hook:
            self.setup.model.after_optimizer_step = self.hook
        else:
            del self.setup.model.after_optimizer_step  # the class's method again

    def step(self) -> dict[str, float]:
        """One synchronised step; the phase durations in seconds."""
        self.marks.clear()
        self.clock.sync()
        self.setup.step()
        self.clock.sync()
        m, s = self.marks, self.clock.seconds
        if "ema_end" not in m:  # the CPU/foreach path skips the update (and the EMA) on a non-finite norm
            raise RuntimeError("the instrumented step skipped its update (non-finite gradient norm)")
        d = {"teacher": s(m["teacher_start"], m["teacher_end"]),
             "student_fwd": s(m["student_start"], m["student_end"]),
             "decoder_fwd": s(m["decoder_start"], m["decoder_end"]),
             "loss_fwd": s(m["decoder_end"], m["forward_end"]),
             "loss_bwd": s(m["forward_end"], m["decoder_bwd_start"]),
             "decoder_bwd": s(m["decoder_bwd_start"], m["decoder_bwd_end"]),
             "student_bwd": s(m["decoder_bwd_end"], m["backward_end"]),
             "optimizer": s(m["backward_end"], m["optimizer_end"]),
             "ema": s(m["ema_start"], m["ema_end"]),
             "optimizer_ema": s(m["backward_end"], m["ema_end"]),  # clipping, AdamW, zero_grad, EMA
             "total": s(m["start"], m["ema_end"])}
        return d


def phase_split(setup: StepSetup, clock: Clock, steps: int) -> tuple[dict[str, float], dict[str, float]]:
    """Median phase times over ``steps`` instrumented steps: (summary split, detailed split)."""
    marks = PhaseMarks(setup, clock)
    try:
        runs = [marks.step() for _ in range(steps)]
    finally:
        marks.remove()
    detail = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    split = {"teacher": detail["teacher"],
             "student_fwd_bwd": detail["student_fwd"] + detail["student_bwd"],
             "decoder": detail["decoder_fwd"] + detail["decoder_bwd"],
             "optimizer_ema": detail["optimizer_ema"]}
    split["other"] = detail["total"] - sum(split.values())  # targets, mask ids, gathers, the loss
    split["total"] = detail["total"]
    return split, detail


# ------------------------------------------------------------------------------------------ inputs


def synthetic_batch(args: argparse.Namespace, cfg: EATConfig, frontend: FrontendConfig,
                    device: torch.device) -> dict[str, Any]:
    """Spectrograms (or waveforms of exactly ``target_length`` frames for ``--fbank-on-device``) on the
    device and the masks on the host, pinned on CUDA, as the loader delivers them."""
    g = torch.Generator().manual_seed(args.seed)
    frames = frontend.target_length
    mask = inverse_block_mask(args.batch * cfg.clone_batch, grid(cfg.encoder, frames), cfg.mask_ratio,
                              cfg.mask_block, cfg.mask_adjust, generator=g)
    if device.type == "cuda":
        mask = mask.pin_memory()
    batch: dict[str, Any] = {"mask": mask, "num_skipped": 0}
    if args.fbank_on_device:
        samples = wave_length(frontend)
        batch["wave"] = (0.1 * torch.randn(args.batch, samples, generator=g)).to(device)
        batch["length"] = torch.full((args.batch,), samples, device=device)
    else:
        batch["source"] = torch.randn(args.batch, frames, frontend.num_mel_bins, generator=g).to(device)
    return batch


def mask_config(cfg: EATConfig, frames: int) -> MaskConfig:
    """The loader workers' mask settings for this model (as the recipe builds them)."""
    return MaskConfig(clones=cfg.clone_batch, mask_ratio=cfg.mask_ratio, block=cfg.mask_block,
                      adjust=cfg.mask_adjust, grid=grid(cfg.encoder, frames))


def endless(loader) -> Iterator[dict[str, Any]]:
    """Batches of ``loader`` over as many epochs as it takes."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def loader_rate(loader, batches: int, warm: int, per_batch: Callable[[dict], None], clock: Clock) -> float:
    """Clips/s of ``batches`` batches after ``warm`` untimed ones (workers start, page cache fills)."""
    it = endless(loader)
    for _ in range(warm):
        per_batch(next(it))
    clock.sync()
    start, clips = time.perf_counter(), 0
    for _ in range(batches):
        batch = next(it)
        per_batch(batch)
        clips += int(batch["index"].numel())
    clock.sync()
    return clips / (time.perf_counter() - start)


def bench_loader(args: argparse.Namespace, cfg: EATConfig, frontend: FrontendConfig, device: torch.device,
                 clock: Clock) -> dict[str, Any]:
    """Input pipeline alone: workers with the fbank, workers decoding only, and the batched device fbank."""
    mask_cfg = mask_config(cfg, frontend.target_length)
    out: dict[str, Any] = {"manifest": str(args.loader), "workers": args.workers, "batches": args.loader_batches}

    def to_device(batch: dict) -> None:
        for key in ("source", "wave", "mask"):
            if key in batch:
                batch[key].to(device, non_blocking=True)

    for wave_mode, key in ((False, "workers_fbank_clips_per_s"), (True, "workers_wave_only_clips_per_s")):
        dataset = PretrainDataset(args.loader, frontend, mask_cfg, return_waveform=wave_mode, seed=args.seed)
        loader = loader_for(dataset, args, device)
        out["clips"] = len(dataset)
        out[key] = loader_rate(loader, args.loader_batches, 2, to_device, clock)
        del loader
    waves = (0.1 * torch.randn(args.batch, wave_length(frontend))).to(device)
    lengths = torch.full((args.batch,), waves.shape[1], device=device)
    fbank_time = timed_loop(lambda: waveform_to_input(waves, frontend, lengths=lengths), 5, clock)
    out["device_fbank_clips_per_s"] = args.batch / fbank_time["step_s_median"]
    return out


def loader_for(dataset: PretrainDataset, args: argparse.Namespace, device: torch.device):
    if len(dataset) < args.batch:
        raise ConfigError(f"{args.loader}: {len(dataset)} clips, fewer than one batch of {args.batch}")
    sampler = ResumableDistributedSampler(len(dataset), shuffle=True, seed=args.seed)
    return build_loader(dataset, sampler, args.batch, num_workers=args.workers, pin_memory=device.type == "cuda",
                        prefetch_factor=4 if args.workers > 0 else None)


# ------------------------------------------------------------------------------------------ the benchmark


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = resolve_device(args.device)
    args.dtype = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    check_sdpa_backend(args.sdpa_backend, device, args.dtype == "bf16")  # before the loader is measured
    if args.loader is not None and not Path(args.loader).is_file():
        raise ManifestError(f"manifest not found: {args.loader}")
    clock = Clock(device)
    cfg = model_config(args)
    enc = cfg.encoder
    frontend = FrontendConfig.from_preset("audioset", target_length=enc.target_length,
                                          num_mel_bins=enc.num_mel_bins)
    flops = pretrain_flops(cfg)
    peak = peak_flops(device, args.peak_tflops)
    result: dict[str, Any] = {
        "tool": "bench_pretrain",
        "command": " ".join(["python", "tools/bench_pretrain.py", *sys.argv[1:]]),
        "machine": machine(device),
        "config": {"preset": args.preset, "batch": args.batch, "clones": cfg.clone_batch,
                   "frames": enc.target_length, "dtype": args.dtype, "compile": args.compile,
                   "sdpa_backend": args.sdpa_backend, "cudnn_benchmark": args.cudnn_benchmark,
                   "fbank_on_device": args.fbank_on_device,
                   "input": "loader" if args.loader else "synthetic (on the device)"},
        "flops_per_clip": flops["total"],
        "flops_split": {k: v for k, v in flops.items() if k != "total"},
        "peak_flops": peak,
        "steps": args.steps,
        "warmup": args.warmup,
    }
    if args.loader:
        result["loader"] = bench_loader(args, cfg, frontend, device, clock)
        if args.loader_only:
            return result
    if args.loader:
        dataset = PretrainDataset(args.loader, frontend, mask_config(cfg, enc.target_length),
                                  return_waveform=args.fbank_on_device, seed=args.seed)
        data = loader_for(dataset, args, device)
    else:
        data = RepeatBatch(synthetic_batch(args, cfg, frontend, device))
    setup = build_step(args, device, data, frontend)
    try:
        start = time.perf_counter()
        for _ in range(args.warmup):
            setup.step()
        clock.sync()
        result["warmup_s"] = time.perf_counter() - start
        setup.trainer.metrics.reduce(setup.trainer.env)  # drop the warm-up's values
        reset_peak_memory(device)
        timing = timed_loop(setup.step, args.steps, clock)
        result.update(peak_memory(device))
        result["clips_per_s"] = args.batch * args.steps / timing["wall_s"]
        result["step_time_s"] = timing
        result["mfu"] = result["clips_per_s"] * flops["total"] / peak if peak else None
        result["achieved_tflops"] = result["clips_per_s"] * flops["total"] / 1e12
        values = setup.trainer.metrics.reduce(setup.trainer.env)  # one host read for all timed steps
        result["loss"] = values["loss"]
        result["split_s"], result["split_detail_s"] = phase_split(setup, clock, args.split_steps)
        result["host_syncs_per_step"] = count_host_syncs(setup.step) if device.type == "cuda" else None
    finally:
        setup.close()
        del setup
    if args.reference:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        result["reference"] = reference_run(args, device, frontend, clock)
        result["speedup_vs_reference"] = result["clips_per_s"] / result["reference"]["clips_per_s"]
    return result


def reference_run(args: argparse.Namespace, device: torch.device, frontend: FrontendConfig,
                  clock: Clock) -> dict[str, Any]:
    """The official-style step (see the module docstring) on the same synthetic batch shape."""
    data = RepeatBatch(synthetic_batch(args, model_config(args), frontend, device))
    setup = build_step(args, device, data, frontend, reference=True)
    try:
        for _ in range(args.warmup):
            setup.step()
        setup.trainer.metrics.reduce(setup.trainer.env)  # drop the warm-up's values
        reset_peak_memory(device)
        timing = timed_loop(setup.step, args.steps, clock)
        values = setup.trainer.metrics.reduce(setup.trainer.env)
    finally:
        setup.close()
    return {"dtype": "fp16 autocast" if device.type == "cuda" else "fp32", "sdpa_backend": "math",
            "optimizer": "AdamW for-loop (no fused, no foreach)", "ema": "per-parameter Python loop",
            "compile": False, "clips_per_s": args.batch * args.steps / timing["wall_s"], "step_time_s": timing,
            "loss": values["loss"], **peak_memory(device)}


def report(r: dict[str, Any]) -> str:
    m, c = r["machine"], r["config"]
    lines = [f"# {m.get('gpu', m['cpu'])} | torch {m['torch']} | {m['threads']} CPU threads"]
    if "loader" in r:
        lo = r["loader"]
        lines.append(f"loader ({lo['workers']} workers, {lo['clips']} clips, {c['frames']} frames): decode + fbank "
                     f"in workers {lo['workers_fbank_clips_per_s']:.1f} clips/s, decode only "
                     f"{lo['workers_wave_only_clips_per_s']:.1f} clips/s, batched fbank on {m['device']} "
                     f"{lo['device_fbank_clips_per_s']:.1f} clips/s")
    if "clips_per_s" not in r:  # --loader-only
        return "\n".join(lines)
    lines += [f"EAT-{c['preset']}: batch {c['batch']} x {c['clones']} clones, {c['frames']} frames, {c['dtype']}, "
             f"sdpa {c['sdpa_backend']}, compile {c['compile']}, input {c['input']}"
             + (", fbank on the device" if c["fbank_on_device"] else ""),
             f"{rate(r['clips_per_s'])} clips/s  (step {r['step_time_s']['step_s_median'] * 1e3:.1f} ms median, "
             f"{r['steps']} steps after {r['warmup']} warm-up; warm-up took {r['warmup_s']:.1f} s)",
             f"{r['flops_per_clip'] / 1e9:.1f} GFLOP/clip -> {r['achieved_tflops']:.2f} TFLOP/s, MFU "
             + (f"{100 * r['mfu']:.1f}% of {r['peak_flops'] / 1e12:.0f} TFLOP/s" if r["mfu"] is not None else "n/a"),
             f"peak memory {r['peak_memory_gib']:.2f} GiB ({r['memory_kind']}); final loss {r['loss']:.4f}"]
    total = r["split_s"]["total"]
    lines.append("step split (instrumented, synchronised): " + ", ".join(
        f"{k} {v * 1e3:.1f} ms ({100 * v / total:.0f}%)" for k, v in r["split_s"].items() if k != "total")
        + f"; total {total * 1e3:.1f} ms")
    if r.get("host_syncs_per_step") is not None:
        lines.append(f"host synchronisations in one step: {r['host_syncs_per_step']}")
    if "reference" in r:
        ref = r["reference"]
        lines.append(f"official-style reference ({ref['dtype']}, math SDPA, for-loop AdamW, Python EMA): "
                     f"{rate(ref['clips_per_s'])} clips/s -> ours/reference = {r['speedup_vs_reference']:.2f}x")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=("base", "large", "tiny"), default="base")
    p.add_argument("--batch", type=int, default=12, help="clips per step (default 12, the official per-GPU batch)")
    p.add_argument("--clones", type=int, default=0, help="masked clones per clip (default: the preset's, 16)")
    p.add_argument("--steps", type=int, default=20, help="timed steps (default 20)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5; compile needs ~3)")
    p.add_argument("--split-steps", type=int, default=3, help="instrumented steps for the phase split (default 3)")
    p.add_argument("--fbank-on-device", action="store_true",
                   help="feed waveforms and run the batched fbank on the device inside the step")
    p.add_argument("--loader", type=Path, metavar="MANIFEST",
                   help="feed real batches from this manifest (and measure the loader alone)")
    p.add_argument("--workers", type=int, default=min(8, available_cores()),
                   help="loader worker processes with --loader (default: the available cores, at most 8)")
    p.add_argument("--loader-only", action="store_true", help="with --loader: measure the input pipeline only")
    p.add_argument("--loader-batches", type=int, default=20, help="batches per loader measurement (default 20)")
    p.add_argument("--reference", action="store_true", help="also time the official-style step, print the ratio")
    add_step_options(p)
    args = p.parse_args(argv)
    check_workers(args.workers)
    for key in ("batch", "steps", "split_steps", "loader_batches"):
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be >= 1")
    if args.warmup < 0 or args.workers < 0 or args.clones < 0:
        p.error("--warmup, --workers and --clones must be >= 0")
    if args.loader_only and args.loader is None:
        p.error("--loader-only needs --loader MANIFEST")
    return args


@cli_main
def main(argv: list[str] | None = None) -> None:
    bench_main(parse_args(argv), run, report, (ConfigError, ManifestError))


if __name__ == "__main__":
    main()
