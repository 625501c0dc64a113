"""Benchmark fine-tuning and inference of an audio classifier on 10 s clips, with and without patchout.

Three measurements at the same batch size, each after a warm-up and with no host sync inside the timed
loop: the trainer's fine-tuning step (``Trainer.train_step`` over ``eat.train.finetune.FinetuneModel``:
spectrogram mixup + SpecAugment, BCE over 527 classes, layer-decayed AdamW, bf16 autocast on CUDA), the
same step with PaSST-style structured patchout (``--patchout s_t,s_f``: time columns and frequency rows
removed; the printed ratio is the speed-up), and inference (eval mode, ``torch.inference_mode``, in the
trainer's ``forward_context``: same autocast and ``--sdpa-backend`` kernel). MFU uses :mod:`eat.train.flops`
(with patchout, the FLOPs of the tokens that remain).

    python tools/bench_finetune.py --preset eat_base --batch 48 --compile --json bench_ft_eat.json
    python tools/bench_finetune.py --preset passt_s --patchout 40,4
    python tools/bench_finetune.py --preset tiny --steps 3                       # CPU smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import sys
import tempfile
from typing import Any

import torch

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
from eat.audio.augment import AugmentConfig
from eat.audio.fbank import FrontendConfig
from eat.cli import cli_main
from eat.config import ConfigError
from eat.model.classifier import Classifier, ClassifierConfig, PatchoutConfig, classifier_config
from eat.train.dist import DistEnv
from eat.train.finetune import BatchPrep, FinetuneModel, LossSection
from eat.train.flops import classifier_flops_per_clip, grid
from eat.train.layer_decay import finetune_param_groups
from eat.train.metrics_log import peak_flops
from eat.train.optim import OptimConfig
from eat.train.trainer import TrainConfig, Trainer

PRESETS = ("eat_base", "ast_base", "passt_s", "tiny")
FRAMES_10S = {"eat_base": 1024, "ast_base": 1024, "passt_s": 998}  # tiny keeps its own 256 (CPU-sized)
# EAT's AudioSet fine-tuning augmentation (eat.md 7.2); roll and gain run in the loader workers
OFFICIAL_AUGMENT = AugmentConfig(spec_mixup_prob=0.9, spec_mixup_alpha=0.8, freq_mask=25.6, time_mask=204.8)


def default_patchout(cfg: ClassifierConfig, frames: int) -> PatchoutConfig:
    """PaSST-S's proportions on any grid: 40 of 99 time columns, 4 of 12 frequency rows."""
    t, f = grid(cfg.encoder, frames)
    return PatchoutConfig(s_t=round(0.4 * t), s_f=round(f / 3))


def parse_patchout(text: str) -> PatchoutConfig:
    try:
        s_t, s_f = (int(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--patchout {text!r}: expected two integers 's_t,s_f', e.g. 40,4") from None
    if s_t < 0 or s_f < 0:
        raise ConfigError(f"--patchout {text!r}: the counts must be >= 0")
    return PatchoutConfig(s_t=s_t, s_f=s_f)


class StepBench:
    """A fine-tuning trainer on a repeated device batch; ``step()`` is one ``Trainer.train_step``."""

    def __init__(self, args: argparse.Namespace, cfg: ClassifierConfig, device: torch.device, frames: int):
        torch.manual_seed(args.seed)
        self.classifier = Classifier(cfg)
        augment = OFFICIAL_AUGMENT if args.augment == "official" else AugmentConfig()
        augment = dataclasses.replace(augment, time_mask=min(augment.time_mask, 0.2 * frames))
        model = FinetuneModel(self.classifier, augment, LossSection(kind="bce", bce_norm="positives"),
                              multi_label=True, seed=args.seed)
        g = torch.Generator().manual_seed(args.seed)
        source = torch.randn(args.batch, frames, cfg.encoder.num_mel_bins, generator=g)
        target = (torch.rand(args.batch, cfg.num_classes, generator=g) < 0.02).float()
        batch = {"source": source.to(device), "target": target.to(device)}
        frontend = FrontendConfig(target_length=frames, num_mel_bins=cfg.encoder.num_mel_bins)
        prep = BatchPrep(frontend, augment, cfg.num_classes, soft_targets=True, seed=args.seed)
        self.tmp = tempfile.TemporaryDirectory(prefix="eat-bench-")
        train_cfg = TrainConfig(out_dir=self.tmp.name, max_steps=10**9, device=device.type, precision=args.dtype,
                                sdpa_backend=args.sdpa_backend, cudnn_benchmark=args.cudnn_benchmark,
                                compile=args.compile, seed=args.seed, log_every=10**9, save_every=0,
                                resume="none", tensorboard=False, check_weights=False)
        optim_cfg = OptimConfig(lr=5e-5, min_lr=1e-6, warmup_steps=4000, clip_grad=0.0)
        depth = cfg.encoder.depth

        def groups(m: torch.nn.Module) -> list[dict]:
            return finetune_param_groups(m, optim_cfg.weight_decay, 0.65, depth)

        env = DistEnv(rank=0, world_size=1, local_rank=0, device=device)
        self.trainer = Trainer(model, RepeatBatch(batch), train_cfg, optim_cfg, env, groups, prepare=prep)
        self.batch = batch

    def step(self) -> None:
        self.trainer.train_step(self.batch)

    def infer(self) -> None:
        with torch.inference_mode(), self.trainer.forward_context():
            self.classifier(self.batch["source"])

    def close(self) -> None:
        self.trainer.logger.close()
        self.tmp.cleanup()


def measure(fn, args: argparse.Namespace, device: torch.device, clock: Clock, flops: float,
            peak: float | None, trainer: Trainer | None = None) -> dict[str, Any]:
    for _ in range(args.warmup):
        fn()
    if trainer is not None:
        trainer.metrics.reduce(trainer.env)  # drop the warm-up's values
    reset_peak_memory(device)
    timing = timed_loop(fn, args.steps, clock)
    clips_per_s = args.batch * args.steps / timing["wall_s"]
    return {"clips_per_s": clips_per_s, "step_time_s": timing, "flops_per_clip": flops,
            "mfu": clips_per_s * flops / peak if peak else None, **peak_memory(device)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = resolve_device(args.device)
    args.dtype = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    base_cfg = classifier_config(args.preset, args.classes)
    frames = args.frames or FRAMES_10S.get(args.preset, base_cfg.encoder.target_length)
    base_cfg = classifier_config(args.preset, args.classes, target_length=frames)
    patchout = parse_patchout(args.patchout) if args.patchout else default_patchout(base_cfg, frames)
    clock, peak = Clock(device), peak_flops(device, args.peak_tflops)
    tp, fp = grid(base_cfg.encoder, frames)
    result: dict[str, Any] = {
        "tool": "bench_finetune",
        "command": " ".join(["python", "tools/bench_finetune.py", *sys.argv[1:]]),
        "machine": machine(device),
        "config": {"preset": args.preset, "batch": args.batch, "frames": frames, "grid": [tp, fp],
                   "classes": args.classes, "dtype": args.dtype, "compile": args.compile,
                   "sdpa_backend": args.sdpa_backend, "cudnn_benchmark": args.cudnn_benchmark,
                   "augment": args.augment,
                   "patchout": {"s_t": patchout.s_t, "s_f": patchout.s_f}},
        "peak_flops": peak, "steps": args.steps, "warmup": args.warmup,
    }
    for name, cfg in (("train", base_cfg), ("train_patchout", dataclasses.replace(base_cfg, patchout=patchout))):
        bench = StepBench(args, cfg, device, frames)
        try:
            result[name] = measure(bench.step, args, device, clock,
                                   classifier_flops_per_clip(cfg, frames, training=True), peak, bench.trainer)
            result[name]["loss"] = bench.trainer.metrics.reduce(bench.trainer.env)["loss"]
            if device.type == "cuda":
                result[name]["host_syncs_per_step"] = count_host_syncs(bench.step)
            if name == "train":
                result["inference"] = measure(bench.infer, args, device, clock,
                                              classifier_flops_per_clip(cfg, frames), peak)
        finally:
            bench.close()
            del bench
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    result["patchout_speedup"] = result["train_patchout"]["clips_per_s"] / result["train"]["clips_per_s"]
    return result


def report(r: dict[str, Any]) -> str:
    m, c = r["machine"], r["config"]
    po = c["patchout"]

    def line(label: str, x: dict[str, Any]) -> str:
        mfu = f"MFU {100 * x['mfu']:.1f}%" if x["mfu"] is not None else "MFU n/a"
        return (f"{label}: {rate(x['clips_per_s'])} clips/s ({x['step_time_s']['step_s_median'] * 1e3:.1f} ms per "
                f"batch, {x['flops_per_clip'] / 1e9:.1f} GFLOP/clip, {mfu}, peak memory {x['peak_memory_gib']:.2f} GiB)")

    lines = [f"# {m.get('gpu', m['cpu'])} | torch {m['torch']} | {m['threads']} CPU threads",
             f"{c['preset']}: batch {c['batch']}, {c['frames']} frames = {c['grid'][0]} x {c['grid'][1]} patches, "
             f"{c['dtype']}, sdpa {c['sdpa_backend']}, compile {c['compile']}, augment {c['augment']}",
             line("fine-tuning step", r["train"]),
             line(f"fine-tuning step, patchout s_t={po['s_t']} s_f={po['s_f']}", r["train_patchout"]),
             line("inference", r["inference"]),
             f"patchout speed-up at batch {c['batch']}: {r['patchout_speedup']:.2f}x"]
    if "host_syncs_per_step" in r["train"]:
        lines.append(f"host synchronisations per fine-tuning step: {r['train']['host_syncs_per_step']}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=PRESETS, default="eat_base")
    p.add_argument("--batch", type=int, default=48, help="clips per step (default 48, EAT's AS-20K batch)")
    p.add_argument("--frames", type=int, default=0,
                   help="input frames (default: 10 s for the preset, 1024 / 998; tiny: its 256)")
    p.add_argument("--classes", type=int, default=527)
    p.add_argument("--patchout", help="'s_t,s_f' time columns and frequency rows removed "
                                      "(default: PaSST-S proportions of the grid, 40,4 for passt_s)")
    p.add_argument("--augment", choices=("official", "none"), default="official",
                   help="official: EAT's AudioSet spectrogram mixup + SpecAugment in the step")
    p.add_argument("--steps", type=int, default=20, help="timed steps per measurement (default 20)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    add_step_options(p)
    args = p.parse_args(argv)
    if args.batch < 2 or args.steps < 1 or args.warmup < 0 or args.classes < 1 or args.frames < 0:
        p.error("--batch must be >= 2 (mixup pairs clips), --steps and --classes >= 1, --warmup and --frames >= 0")
    return args


@cli_main
def main(argv: list[str] | None = None) -> None:
    bench_main(parse_args(argv), run, report)


if __name__ == "__main__":
    main()
