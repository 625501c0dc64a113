"""The whole toolkit end to end on synthetic audio, with the evidence that pretraining learns something.

    python tools/demo.py --out outputs/demo [--seed 0] [--quick] [--steps N] [--device auto|cpu|cuda]
        [--set KEY=VALUE ...] [--pooling mean|cls]

Stages (each prints its progress and time; ``make demo`` runs this):

1. **data** - an unlabelled corpus and an ESC-50-shaped labelled set whose classes differ in temporal
   structure (:mod:`eat.data.synthetic`);
2. **pretraining** - the real recipe as a subprocess: ``torchrun --standalone --nproc_per_node=2
   recipes/pretrain_as2m.py --config recipes/configs/demo.yaml ...`` (2 CPU ranks; one process on a GPU);
3. **export** - the student encoder (:func:`eat.checkpoint_export.export_checkpoint`), and the same network's initial weights
   (the run's seed) as the random-weights control;
4. **linear probes** - 5-fold cross-validation (train on 4 folds, test on the 5th, average) with
   ``eat.eval.probe`` on (a) the pretrained encoder, (b) the same encoder before pretraining and (c) pooled
   log-mel statistics (per-band mean and std over time); encoder features = the mean of the last block's
   patch tokens (``--pooling cls``: its CLS token);
5. **fine-tuning** - ``recipes/finetune.py --task esc50 --init <export>`` on all 5 folds, short schedule;
6. **report** - one table, ``OUT/summary.json`` and figures ``OUT/*.png`` (loss curves, a spectrogram with
   its inverse block masks, probe accuracies).

``--quick`` runs a smaller version of the same comparison (the test suite uses it). ``--set`` passes
overrides to the pretraining recipe, e.g. ``--steps 2400 --set optim.lr=5e-3`` (how the recipe was tuned:
docs/benchmarks.md, "Demo"). Running again with
the same ``--out`` replaces the previous demo's outputs; any other non-empty folder is refused.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from eat.apps.bench_common import machine as machine_info
from eat.audio.fbank import FrontendConfig, waveform_to_input
from eat.audio.io import AudioError, load_audio
from eat.checkpoint_export import export_checkpoint
from eat.cli import cli_main
from eat.config import ConfigError, load_config
from eat.data.manifest import ManifestError, read_esc50, read_manifest
from eat.data.synthetic import class_spec, make_esc50_like, make_unlabelled_corpus
from eat.eval.probe import probe
from eat.export import ExportError, load_encoder, read_export, save_export
from eat.features import logmel_statistics, read_clips
from eat.model.masking import inverse_block_mask
from eat.train.pretrain import PretrainConfig, build_model

ROOT = Path(__file__).resolve().parents[2]  # the repository: the demo runs its recipes and configs
RECIPE = ROOT / "recipes" / "pretrain_as2m.py"
FINETUNE = ROOT / "recipes" / "finetune.py"
CONFIG = ROOT / "recipes" / "configs" / "demo.yaml"
MARKER = ".eat-demo"  # marks a folder as this tool's output, so a rerun may replace it
OWNED = ("data", "pretrain", "encoder", "encoder_init", "finetune", "summary.json", "loss_curves.png",
         "masks.png", "probe.png")
PROBE_WEIGHT_DECAYS = (1e-4, 1e-3, 1e-2, 1e-1)
PROBE_LAYER = -1  # the last block; pooled by --pooling (mean patch token by default: it beat CLS, docs)
FEATURE_SETS = ("pretrained", "random", "logmel")
LABELS = {"pretrained": "EAT pretrained", "random": "same net, random weights", "logmel": "log-mel mean+std"}


class DemoError(Exception):
    """A stage failed in a way the user can act on; the message says which and why."""


@dataclass(frozen=True)
class Scale:
    """Sizes of one demo run."""

    unlabelled_clips: int
    unlabelled_s: float
    classes: int
    clips_per_class: int
    labelled_s: float
    pretrain_steps: int
    finetune_steps: int
    finetune_folds: tuple[int, ...]


FULL = Scale(unlabelled_clips=400, unlabelled_s=4.0, classes=20, clips_per_class=20, labelled_s=2.56,
             pretrain_steps=2000, finetune_steps=200, finetune_folds=(1, 2, 3, 4, 5))
QUICK = Scale(unlabelled_clips=200, unlabelled_s=4.0, classes=20, clips_per_class=10, labelled_s=2.56,
              pretrain_steps=400, finetune_steps=30, finetune_folds=(1,))


def finetune_overrides(scale: Scale, target_length: int, norm: tuple[float, float], device: str) -> list[str]:
    """The official ESC-50 recipe cut to ``scale.finetune_steps`` updates of 16 clips: a higher LR and no
    SpecAugment or stochastic depth (both slowed such short runs down; label smoothing, roll and gain stay).
    The front-end is the pretraining's (length and normalisation)."""
    return [
        f"data.folds=[{','.join(map(str, scale.finetune_folds))}]",
        f"data.frontend.target_length={target_length}", f"data.frontend.norm_mean={norm[0]}",
        f"data.frontend.norm_std={norm[1]}", "data.batch_size=16", "data.num_workers=0",
        f"train.max_steps={scale.finetune_steps}", f"train.log_every={max(1, scale.finetune_steps // 4)}",
        "train.tensorboard=false", f"train.device={device}", "train.cpu_threads=0",
        "optim.lr=3e-3", f"optim.warmup_steps={max(1, scale.finetune_steps // 10)}",
        "augment.time_mask=0", "augment.freq_mask=0", "model.drop_path=0",
        "eval_every_epochs=1000",  # evaluate once, at the end
    ]


# ---------------------------------------------------------------------------------------------- helpers


def stage(name: str) -> float:
    print(f"\n== {name}", flush=True)
    return time.perf_counter()


def done(t0: float, what: str = "") -> float:
    dt = time.perf_counter() - t0
    print(f"   done in {dt:.1f} s{': ' + what if what else ''}", flush=True)
    return dt


def prepare_out(out: Path) -> None:
    """Create ``out``, or clear a previous demo's outputs there; refuse any other non-empty folder."""
    if out.exists() and not out.is_dir():
        raise DemoError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise DemoError(f"{out}: exists, is not empty and is not a demo output folder; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("outputs of tools/demo.py; a rerun replaces them\n")
    for name in OWNED:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def run_streamed(name: str, cmd: list[str], env: dict[str, str], prefix: str = "   | ") -> str:
    """Run ``cmd``, echoing its output lines as they come; returns the output, raises on failure."""
    print("   $ " + " ".join(cmd), flush=True)
    lines = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                          cwd=ROOT) as proc:
        for line in proc.stdout:
            lines.append(line)
            print(prefix + line.rstrip(), flush=True)
    if proc.returncode != 0:
        raise DemoError(f"{name} exited with status {proc.returncode}; its output is above")
    return "".join(lines)


def child_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


# ---------------------------------------------------------------------------------------------- stages


def make_data(out: Path, scale: Scale, seed: int) -> tuple[Path, Path]:
    manifest = make_unlabelled_corpus(out / "unlabelled", scale.unlabelled_clips, scale.unlabelled_s, seed,
                                      progress=True)
    esc = make_esc50_like(out / "esc50", scale.classes, scale.clips_per_class, scale.labelled_s, seed,
                          progress=True)
    return manifest, esc


def pretrain(run_dir: Path, manifest: Path, steps: int, seed: int, device: str, overrides: list[str]) -> dict:
    """The recipe under torchrun (2 CPU ranks, or 1 process with twice the batch on a GPU)."""
    cfg = yaml.safe_load(CONFIG.read_text())
    gpu = device == "cuda"
    nproc = 1 if gpu else 2
    torchrun = Path(sys.executable).with_name("torchrun")
    launcher = [str(torchrun)] if torchrun.is_file() else [sys.executable, "-m", "torch.distributed.run"]
    cmd = [*launcher, "--standalone", f"--nproc_per_node={nproc}", str(RECIPE), "--config", str(CONFIG),
           f"data.train_manifest={manifest}", f"train.out_dir={run_dir}", f"train.max_steps={steps}",
           f"train.seed={seed}", f"train.device={device}", "train.resume=none",
           f"model.ema_anneal_end_step={steps}"]
    if gpu:
        cmd.append(f"data.batch_size={2 * cfg['data']['batch_size']}")
    cmd += overrides  # last, so that they win
    t0 = time.perf_counter()
    run_streamed("pretraining", cmd, child_env())
    seconds = time.perf_counter() - t0
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [r for r in records if r.get("kind") == "train"]
    return {"steps": steps, "seconds": seconds, "processes": nproc, "device": device, "overrides": overrides,
            "clips_per_update": nproc * cfg["data"]["batch_size"] * (2 if gpu else 1),
            "final_frame_loss": train[-1]["frame_loss"], "final_utterance_loss": train[-1]["utterance_loss"]}


def export_both(run_dir: Path, out: Path) -> tuple[Path, Path]:
    """The pretrained student, and the network the run started from (re-created from its saved config by the
    recipe's own :func:`eat.train.pretrain.build_model`, which seeds torch with ``train.seed``)."""
    encoder, _ = export_checkpoint(run_dir, out / "encoder")
    initial = build_model(load_config(PretrainConfig, run_dir / "config.yaml"))[0].student
    cfg, _ = read_export(encoder)
    init = save_export(out / "encoder_init", initial.cfg, initial.state_dict(), cfg.frontend,
                       meta={"source": "initial weights of " + str(run_dir), "kind": "random-init"})
    return encoder, init


def labelled_folds(esc_root: Path) -> tuple[list[Path], torch.Tensor, torch.Tensor]:
    """Paths, class indices and fold numbers of every labelled clip."""
    paths, labels, folds = [], [], []
    for fold in range(1, 6):
        for item in read_esc50(esc_root, folds=[fold]).items:
            paths.append(item.path)
            labels.append(item.labels[0])
            folds.append(fold)
    return paths, torch.tensor(labels), torch.tensor(folds)


def embed_all(waves: list[torch.Tensor], encoder_dir: Path | None, device: str, pooling: str) -> torch.Tensor:
    """Utterance embeddings of every clip: an export's last block pooled by ``pooling`` (mean patch token or CLS),
    or log-mel statistics."""
    if encoder_dir is None:
        return logmel_statistics(waves, FrontendConfig())
    extractor = load_encoder(encoder_dir, device)
    feats = extractor.extract_features(waves, layers=PROBE_LAYER, utterance=pooling, batch_size=32)
    return feats.embeddings.float().cpu()


def cross_validate(x: torch.Tensor, y: torch.Tensor, folds: torch.Tensor, device: str) -> dict:
    """Train on four folds, test on the fifth, for each fold; the mean and the per-fold accuracies."""
    accs = {}
    for fold in range(1, 6):
        test = folds == fold
        r = probe(x[~test], y[~test], x[test], y[test], num_classes=int(y.max()) + 1,
                  weight_decays=PROBE_WEIGHT_DECAYS, device=device)
        accs[fold] = r["score"]
    values = list(accs.values())
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "folds": accs, "dim": int(x.shape[1])}


def linear_probes(esc_root: Path, encoders: dict[str, Path | None], device: str, pooling: str) -> dict[str, dict]:
    paths, y, folds = labelled_folds(esc_root)
    waves = read_clips(paths, 16000)
    bad = [w for w in waves if isinstance(w, AudioError)]
    if bad:
        raise DemoError(str(bad[0]))
    results = {}
    for name, encoder_dir in encoders.items():
        t0 = time.perf_counter()
        x = embed_all(waves, encoder_dir, device, pooling)
        results[name] = cross_validate(x, y, folds, device)
        results[name]["seconds"] = time.perf_counter() - t0
        r = results[name]
        print(f"   {LABELS[name]:<26} {100 * r['mean']:5.1f} % (folds "
              + " ".join(f"{100 * a:.0f}" for a in r["folds"].values()) + f"), {r['seconds']:.1f} s", flush=True)
    return results


def finetune(esc_root: Path, encoder: Path, out_dir: Path, scale: Scale, device: str) -> dict:
    cfg, _ = read_export(encoder)
    fe = cfg.frontend
    cmd = [sys.executable, str(FINETUNE), "--task", "esc50", "--esc50-root", str(esc_root), "--init", str(encoder),
           "--out", str(out_dir), *finetune_overrides(scale, fe.target_length, (fe.norm_mean, fe.norm_std), device)]
    t0 = time.perf_counter()
    run_streamed("fine-tuning", cmd, {**os.environ, "PYTHONUNBUFFERED": "1"})
    summary = json.loads((out_dir / "esc50_summary.json").read_text())
    accs = {int(f): v["acc_last"] for f, v in summary["folds"].items()}
    return {"mean": summary["mean_acc_last"], "std": float(np.std(list(accs.values()))), "folds": accs,
            "steps": scale.finetune_steps, "seconds": time.perf_counter() - t0}


# ---------------------------------------------------------------------------------------------- figures


def plot_losses(run_dir: Path, path: Path) -> None:
    """Frame and utterance loss of the run (``metrics.jsonl``: means over each log interval)."""
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [r for r in records if r.get("kind") == "train"]
    steps = [r["step"] for r in train]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key, title, log in ((axes[0], "frame_loss", "frame loss: decoder vs teacher, masked patches", False),
                                (axes[1], "utterance_loss", "utterance loss: CLS vs mean teacher target (log)", True)):
        ax.plot(steps, [r[key] for r in train], marker="o", markersize=3)
        if log:
            ax.set_yscale("log")
        else:
            ax.set_ylim(bottom=0)
        ax.set_xlabel("update")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    interval = steps[0] if steps else 0
    fig.suptitle(f"pretraining losses (each point: mean over {interval} updates)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_masks(manifest: Path, run_dir: Path, path: Path, seed: int, clones: int = 3) -> None:
    """The first unlabelled clip's first 2.56 s as the model sees it, and ``clones`` inverse block masks."""
    import matplotlib.pyplot as plt


    run_cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    model = run_cfg["model"]
    enc = model["encoder"]
    frames = enc["target_length"]
    fe = FrontendConfig.from_preset(run_cfg["data"]["norm"], target_length=frames)
    man = read_manifest(manifest)
    source = waveform_to_input(load_audio(man.path(0)), fe)  # (T, F)
    grid = (frames // 16, enc["num_mel_bins"] // 16)
    gen = torch.Generator().manual_seed(seed)
    masks = inverse_block_mask(clones, grid, model["mask_ratio"], model["mask_block"], model["mask_adjust"],
                               generator=gen)
    fig, axes = plt.subplots(1, clones + 1, figsize=(3.2 * (clones + 1), 3.4), sharey=True)
    extent = (0, frames / 100, 0, enc["num_mel_bins"])
    for i, ax in enumerate(axes):
        ax.imshow(source.T.numpy(), origin="lower", aspect="auto", cmap="magma", extent=extent)
        if i:
            m = masks[i - 1].reshape(grid).T.float().numpy()  # (F', T')
            ax.imshow(m, origin="lower", aspect="auto", cmap="Greys", alpha=0.8 * m, vmin=0, vmax=1.2,
                      extent=extent, interpolation="nearest")
            ax.set_title(f"clone {i}: {int(m.sum())}/{m.size} patches masked", fontsize=9)
        else:
            ax.set_title(f"input ({frames} frames x {enc['num_mel_bins']} mels)", fontsize=9)
            ax.set_ylabel("mel bin")
        ax.set_xlabel("time (s)")
    fig.suptitle("inverse block masks: the student sees only the bright patches; the decoder predicts the "
                 "teacher's representation of the grey ones", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_probe(summary: dict, path: Path) -> None:
    """Bars: mean accuracy of the three probes and of fine-tuning; whiskers: std over folds."""
    import matplotlib.pyplot as plt

    folds = len(summary["finetune"]["folds"])
    names = ["EAT\npretrained", "same network,\nrandom weights", "log-mel\nmean + std",
             f"fine-tuned from\npretrained ({folds} fold{'s' if folds > 1 else ''})"]
    results = [summary["probe"][n] for n in FEATURE_SETS] + [summary["finetune"]]
    means = [100 * r["mean"] for r in results]
    spread = [100 * r["std"] for r in results]
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    bars = ax.bar(range(len(names)), means, yerr=spread, capsize=4, width=0.6,
                  color=["tab:green", "tab:gray", "tab:blue", "tab:orange"])
    for bar, m, s in zip(bars, means, spread, strict=True):
        ax.text(bar.get_x() + bar.get_width() / 2, m + s + 1.5, f"{m:.1f}", ha="center", fontsize=9)
    chance = 100 / summary["data"]["classes"]
    ax.axhline(chance, color="k", linestyle=":", linewidth=1)
    ax.text(len(names) - 0.55, chance + 1.2, "chance", ha="right", fontsize=8)
    ax.axvline(2.5, color="k", linewidth=0.5)
    ax.set_xticks(range(len(names)), names, fontsize=9)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{summary['data']['classes']} synthetic classes: linear probes (5-fold CV) | fine-tuning\n"
                 "bars: mean over folds, whiskers: std over folds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- report


def table(summary: dict) -> str:
    p, ft = summary["probe"], summary["finetune"]
    rows = [
        "features / model                      accuracy   per fold",
        "------------------------------------  ---------  ----------------------",
    ]
    for name in FEATURE_SETS:
        r = p[name]
        rows.append(f"linear probe: {LABELS[name]:<23} {100 * r['mean']:6.1f} %   "
                    + " ".join(f"{100 * a:3.0f}" for a in r["folds"].values()))
    rows.append(f"fine-tuned from the pretrained encoder {100 * ft['mean']:6.1f} %   "
                + " ".join(f"{100 * a:3.0f}" for a in ft["folds"].values()))
    pre = summary["pretrain"]
    rows.append(f"pretraining: {pre['steps']} updates of {pre['clips_per_update']} clips in {pre['seconds']:.0f} s "
                f"({pre['processes']} x {pre['device']}); chance {100 / summary['data']['classes']:.0f} %; "
                f"total {summary['seconds']['total']:.0f} s")
    return "\n".join(rows)


def machine() -> str:
    info = machine_info("cuda" if torch.cuda.is_available() else "cpu")
    gpu = f", {info['gpu']}" if "gpu" in info else ""
    return f"{info['cpu']}, {os.cpu_count()} cores{gpu}; torch {info['torch']}, Python {info['python']}"


def run(args: argparse.Namespace) -> dict:
    scale = QUICK if args.quick else FULL
    if args.steps is not None:
        scale = dataclasses.replace(scale, pretrain_steps=args.steps)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    out: Path = args.out
    prepare_out(out)
    times = {}
    t_all = time.perf_counter()

    t0 = stage(f"1/6 synthetic data ({scale.unlabelled_clips} unlabelled clips of {scale.unlabelled_s:g} s; "
               f"{scale.classes} classes x {scale.clips_per_class} labelled clips of {scale.labelled_s:g} s)")
    manifest, esc_root = make_data(out / "data", scale, args.seed)
    times["data"] = done(t0, f"{manifest} and {esc_root}")

    t0 = stage(f"2/6 pretraining: {scale.pretrain_steps} updates, recipes/configs/demo.yaml")
    pre = pretrain(out / "pretrain", manifest, scale.pretrain_steps, args.seed, device, args.overrides)
    times["pretrain"] = done(t0, f"frame loss {pre['final_frame_loss']:.3f}")

    t0 = stage("3/6 export: pretrained student and its initial (random) weights")
    encoder, init = export_both(out / "pretrain", out)
    times["export"] = done(t0, f"{encoder}, {init}")

    pooled = "mean of the last block's patch tokens" if args.pooling == "mean" else "CLS token of the last block"
    t0 = stage(f"4/6 linear probes, 5-fold cross-validation (encoders: {pooled})")
    probes = linear_probes(esc_root, {"pretrained": encoder, "random": init, "logmel": None}, device, args.pooling)
    times["probe"] = done(t0)

    t0 = stage(f"5/6 fine-tuning from the pretrained encoder: {len(scale.finetune_folds)} fold(s) x "
               f"{scale.finetune_steps} updates")
    ft = finetune(esc_root, encoder, out / "finetune", scale, device)
    times["finetune"] = done(t0, f"mean accuracy {100 * ft['mean']:.1f} %")

    t0 = stage("6/6 figures and summary")
    times["total"] = time.perf_counter() - t_all
    summary = {
        "seed": args.seed, "quick": args.quick, "machine": machine(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "data": {"unlabelled_clips": scale.unlabelled_clips, "unlabelled_s": scale.unlabelled_s,
                 "classes": scale.classes, "clips_per_class": scale.clips_per_class, "labelled_s": scale.labelled_s,
                 "class_names": [class_spec(k).name for k in range(scale.classes)]},
        "pretrain": pre,
        "probe": {"features": f"encoders: layer {PROBE_LAYER}, {args.pooling} pooling; logmel: per-band mean and std",
                  "protocol": "5-fold CV, eat.eval.probe (L-BFGS logistic regression, weight decay from "
                              f"{list(PROBE_WEIGHT_DECAYS)} on a 20 % validation split)", **probes},
        "finetune": ft,
        "seconds": times,
    }
    plot_losses(out / "pretrain", out / "loss_curves.png")
    plot_masks(manifest, out / "pretrain", out / "masks.png", args.seed)
    plot_probe(summary, out / "probe.png")
    times["report"] = time.perf_counter() - t0
    times["total"] = time.perf_counter() - t_all
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"   figures: {out / 'loss_curves.png'}, {out / 'masks.png'}, {out / 'probe.png'}")
    print(f"   summary: {out / 'summary.json'}\n")
    print(table(summary))
    return summary


@cli_main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("outputs/demo"), help="output folder (default outputs/demo)")
    ap.add_argument("--seed", type=int, default=0, help="data, model and training seed (default 0)")
    ap.add_argument("--quick", action="store_true", help="smaller data and budget (about 2 minutes on 2 cores)")
    ap.add_argument("--steps", type=int, help=f"pretraining updates (default {FULL.pretrain_steps}, "
                                              f"quick {QUICK.pretrain_steps})")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                    help="auto: the GPU when there is one (default)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override of the pretraining recipe (recipes/configs/demo.yaml), repeatable")
    ap.add_argument("--pooling", choices=("mean", "cls"), default="mean",
                    help="encoder features for the probes: mean patch token (default) or CLS token")
    args = ap.parse_args(argv)
    bad = [o for o in args.overrides if "=" not in o or o.startswith("=")]
    if bad:
        sys.exit(f"error: --set {bad[0]}: expected KEY=VALUE, e.g. --set optim.lr=3e-3")
    if args.steps is not None and args.steps < 1:
        sys.exit(f"error: --steps must be positive, got {args.steps}")
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda, but no CUDA device is available")
    try:
        run(args)
    except (DemoError, ExportError, ManifestError, ConfigError, AudioError, OSError) as e:
        sys.exit(f"error: {e}")
