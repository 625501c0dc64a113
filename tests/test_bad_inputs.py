"""Bad input across the Python API and every CLI: each case ends in a one-line error naming the file or
key with a non-zero exit (never a traceback), a correct result, or a skip that is counted.

CLIs run in-process (their ``main`` with ``SystemExit``) for speed; a few real subprocesses at the end
show that stderr then holds the one line and no traceback."""

from __future__ import annotations

import errno
import json
import runpy
import sys
import time
from pathlib import Path

import numpy as np
import procs
import pytest
import soundfile
import torch

import eat.hear as hear
from eat.audio.fbank import FrontendConfig, fbank
from eat.audio.io import AudioError, load_audio, resample
from eat.config import ConfigError, load_config
from eat.data.datasets import LabelledDataset, PretrainDataset, Skipped
from eat.data.loaders import ResumableDistributedSampler, build_loader
from eat.data.manifest import LabelledItem, ManifestError, read_manifest, read_path_label_csv, write_manifest
from eat.eval.probe import probe
from eat.export import ExportError, save_export
from eat.features import FeatureExtractor
from eat.model.eat import eat_config
from eat.model.vit import Encoder
from eat.train import dist
from eat.train.trainer import TrainConfig, check_train_config

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "configs" / "tiny.yaml"
SR = 16000
NOT_UTF8 = b"\xff\xfe\xfa not utf-8 \xc3\x28\n"


class Script:
    """A tool or recipe run in this process the way ``python PATH ARGS`` runs it (``runpy`` as ``__main__``,
    ``sys.argv`` set): the user's entry point, without a new interpreter per case. Nothing is imported from it."""

    def __init__(self, path: Path):
        self.path = path

    def main(self, argv: list[str]) -> None:
        saved = sys.argv
        sys.argv = [str(self.path), *argv]
        try:
            runpy.run_path(str(self.path), run_name="__main__")
        finally:
            sys.argv = saved


TOOLS = {name: Script(ROOT / "tools" / f"{name}.py") for name in (
    "extract_features", "compute_norm_stats", "linear_probe", "make_manifest", "export_encoder",
    "convert_official", "prepare_esc50", "prepare_spc2", "prepare_audioset", "make_synthetic_data", "demo",
    "bench_frontend", "bench_pretrain", "bench_finetune")}
PRETRAIN = Script(ROOT / "recipes" / "pretrain_as2m.py")
FINETUNE = Script(ROOT / "recipes" / "finetune.py")


def run_main(main, argv: list[str], capsys) -> tuple[int | str | None, str, str]:
    """Call a CLI ``main``; returns (exit code or message, stdout, stderr)."""
    code = 0
    try:
        main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_error(code, err: str, *needles: str) -> str:
    """A non-zero exit with ONE ``error:`` line that holds every needle, and no traceback."""
    message = code if isinstance(code, str) else err.strip().splitlines()[-1] if err.strip() else ""
    assert code not in (0, None), f"expected a failure, got exit {code!r}"
    assert "Traceback" not in err and "Traceback" not in str(code)
    assert message.startswith("error: ") and "\n" not in message.strip(), message
    for n in needles:
        assert n in message, (n, message)
    return message


# --------------------------------------------------------------------------------------------- data


def _wav(path: Path, x: np.ndarray, subtype: str = "FLOAT", sr: int = SR) -> Path:
    soundfile.write(path, x, sr, subtype=subtype)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    d: dict[str, Path] = {"root": root}
    for i in range(4):
        d[f"good{i}"] = _wav(root / f"good{i}.wav", (0.1 * rng.standard_normal(SR)).astype(np.float32), "PCM_16")
    x = (0.1 * rng.standard_normal(SR)).astype(np.float32)
    x[100] = np.nan
    d["nan"] = _wav(root / "nan.wav", x)
    x = (0.1 * rng.standard_normal(SR)).astype(np.float32)
    x[5] = np.inf
    d["inf"] = _wav(root / "inf.wav", x)
    full = _wav(root / "full.wav", (0.1 * rng.standard_normal(48000)).astype(np.float32), "PCM_16")
    d["trunc"] = root / "trunc.wav"
    d["trunc"].write_bytes(full.read_bytes()[: 44 + 2 * 500])  # header: 48000 frames; present: 500
    full.unlink()
    d["one"] = _wav(root / "one.wav", np.zeros(1, np.float32))
    d["empty"] = root / "empty.wav"
    d["empty"].write_bytes(b"")
    d["text"] = root / "text.wav"
    d["text"].write_text("not audio\n")
    d["utf8"] = root / "bad.yaml"
    d["utf8"].write_bytes(NOT_UTF8)
    d["file"] = root / "a_file"
    d["file"].write_text("I am a file\n")
    good = [(f"good{i}.wav", SR) for i in range(4)]
    d["good_tsv"] = write_manifest(root / "good.tsv", root, good)
    d["mixed_tsv"] = write_manifest(root / "mixed.tsv", root,
                                    good + [("nan.wav", SR), ("trunc.wav", 48000), ("one.wav", 1)])
    d["all_bad_tsv"] = write_manifest(root / "all_bad.tsv", root, [("nan.wav", SR), ("inf.wav", SR)])
    d["csv_utf8"] = root / "labels.csv"
    d["csv_utf8"].write_bytes(b"path,label\n" + NOT_UTF8)
    return d


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    cfg = eat_config("tiny").encoder
    return save_export(tmp_path_factory.mktemp("enc") / "tiny", cfg, Encoder(cfg).state_dict(),
                       FrontendConfig(target_length=256))


@pytest.fixture(scope="module")
def fx() -> FeatureExtractor:
    torch.manual_seed(0)
    return FeatureExtractor(Encoder(eat_config("tiny").encoder), FrontendConfig(target_length=256))


@pytest.fixture(scope="module")
def hear_model(encoder):
    return hear.load_model(str(encoder), device="cpu")


def _clip(seconds: float = 1.0, seed: int = 1) -> torch.Tensor:
    return 0.1 * torch.randn(int(seconds * SR), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------ audio files (API)


@pytest.mark.parametrize("key, reason", [
    ("nan", "non-finite"), ("inf", "non-finite"), ("trunc", "truncated: the header promises 48000 frames"),
    ("empty", "empty file"), ("text", "cannot decode"),
])
def test_load_audio_refuses_bad_files_naming_them(data, key, reason):
    with pytest.raises(AudioError) as info:
        load_audio(data[key])
    assert str(data[key]) in str(info.value) and reason in str(info.value)


def test_load_audio_missing_and_folder(data):
    with pytest.raises(AudioError, match="file not found"):
        load_audio(data["root"] / "nope.wav")
    with pytest.raises(AudioError, match="not a regular file"):
        load_audio(data["root"])


@pytest.mark.parametrize("rate", [0, -16000, 16000.5, "16k", float("nan"), True])
def test_load_audio_sample_rate_must_be_a_positive_integer(data, rate):
    with pytest.raises(ValueError, match="sample_rate"):
        load_audio(data["good0"], sample_rate=rate)


def test_resample_refuses_bad_rates():
    with pytest.raises(ValueError, match="orig_sr"):
        resample(_clip(), -1, 16000)


# ----------------------------------------------------------------------------------- in-memory audio


def test_fbank_takes_numpy_and_scales_integer_pcm():
    x = _clip()
    ref = fbank(x)
    torch.testing.assert_close(fbank(x.numpy()), ref)
    pcm = torch.round(x * 32767).to(torch.int16)
    torch.testing.assert_close(fbank(pcm), fbank(pcm.float() / 32768))
    torch.testing.assert_close(fbank(pcm.numpy()), fbank(pcm.float() / 32768))


@pytest.mark.parametrize("kwargs, key", [({"num_mel_bins": 0}, "num_mel_bins"), ({"sample_rate": 0}, "sample_rate"),
                                         ({"num_mel_bins": 2.5}, "num_mel_bins")])
def test_fbank_refuses_bad_settings(kwargs, key):
    with pytest.raises(ValueError, match=key):
        fbank(_clip(), **kwargs)


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.complex64])
def test_audio_of_unknown_scale_is_refused(fx, dtype):
    with pytest.raises(ValueError, match="dtype"):
        fx.extract_features(torch.zeros(SR, dtype=dtype))


@pytest.mark.parametrize("dtype, scale", [(torch.int16, 32768.0), (torch.int32, 2.0**31), (torch.int8, 128.0)])
def test_extract_features_scales_integer_pcm(fx, dtype, scale):
    top = {torch.int16: 32767, torch.int32: 2**31 - 1, torch.int8: 127}[dtype]
    pcm = torch.round(_clip() * top * 5).clamp(-top, top).to(dtype)
    got = fx.extract_features(pcm).embeddings
    want = fx.extract_features(pcm.double() / scale).embeddings
    torch.testing.assert_close(got, want)


def test_extract_features_takes_numpy(fx):
    x = _clip()
    torch.testing.assert_close(fx.extract_features(x.numpy().astype(np.float64)).embeddings,
                               fx.extract_features(x).embeddings)


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_extract_features_refuses_non_finite_audio(fx, bad):
    x = _clip()
    x[7] = float(bad)
    with pytest.raises(ValueError, match="non-finite"):
        fx.extract_features([_clip(seed=2), x])


@pytest.mark.parametrize("rate", [0, -1, 16000.5, "16000"])
def test_extract_features_sample_rate_must_be_a_positive_integer(fx, rate):
    with pytest.raises(ValueError, match="sample_rate"):
        fx.extract_features(_clip(), sample_rate=rate)


@pytest.mark.parametrize("audio, match", [([], "no clips"), (torch.zeros(0), "no samples"),
                                          (torch.zeros(100), "fewer than one")])
def test_extract_features_refuses_empty_or_too_short(fx, audio, match):
    with pytest.raises(ValueError, match=match):
        fx.extract_features(audio)


def test_extract_features_refuses_non_finite_fbank(fx):
    x = torch.zeros(1, 100, 128)
    x[0, 3, 4] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        fx.extract_features(x)


def test_timestamps_regular_on_two_hours_and_within_half_a_hop_of_the_end(fx):
    hop_s = 16 * 0.010
    count = int(2 * 3600 / hop_s) + 1
    ts = fx.column_times(count) * 1000.0  # milliseconds, as HEAR returns them
    assert ts.dtype == torch.float64
    steps = ts.diff()
    assert float((steps - steps.mean()).abs().max()) < 1e-6
    for seconds in (0.025, 0.1, 0.99, 2.0, 3.74, 10.0, 61.3):
        n = int(round(seconds * SR))
        out = fx.extract_features(_clip(seconds), granularity="frame")
        assert float(out.timestamps.max()) <= n / SR + hop_s / 2


# --------------------------------------------------------------------------------------------- HEAR


def test_hear_numpy_and_int16_match_float(hear_model):
    x = torch.rand(2, SR, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ref = hear.get_scene_embeddings(x, hear_model)
    torch.testing.assert_close(hear.get_scene_embeddings(x.numpy(), hear_model), ref)
    pcm = torch.round(x * 32767).to(torch.int16)
    torch.testing.assert_close(hear.get_scene_embeddings(pcm, hear_model),
                               hear.get_scene_embeddings(pcm.float() / 32768, hear_model))


@pytest.mark.parametrize("audio, match", [
    (torch.zeros(0, SR), "no sound"), (torch.zeros(SR), "n_sounds, n_samples"),
    (torch.full((2, SR), float("nan")), "non-finite"), (torch.zeros(2, 0), "no sound"),
])
def test_hear_refuses_bad_batches(hear_model, audio, match):
    with pytest.raises(ValueError, match=match):
        hear.get_timestamp_embeddings(audio, hear_model)


@pytest.mark.parametrize("kwargs, match", [({"layers": 7}, "layer 7"), ({"batch_size": 0}, "batch_size"),
                                           ({"utterance": "max"}, "utterance")])
def test_hear_load_model_refuses_bad_options(encoder, kwargs, match):
    with pytest.raises(ValueError, match=match):
        hear.load_model(str(encoder), device="cpu", **kwargs)


def test_hear_load_model_missing_path(tmp_path):
    with pytest.raises(ExportError, match="not found"):
        hear.load_model(str(tmp_path / "nope"))


# -------------------------------------------------------------------------------------------- probe


def _features(n: int = 40, d: int = 6, classes: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    return torch.randn(n, d, generator=g) + y[:, None].float(), y


@pytest.mark.parametrize("where", ["train", "test"])
def test_probe_refuses_non_finite_features_at_once(where):
    tx, ty = _features()
    vx, vy = _features(seed=1)
    (tx if where == "train" else vx)[3, 2] = float("nan")
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=f"{'training' if where == 'train' else 'test'} features"):
        probe(tx, ty, vx, vy)
    assert time.perf_counter() - t0 < 5


def test_probe_refuses_a_test_class_never_seen_in_training():
    tx, ty = _features()
    vx, vy = _features(seed=1, classes=3)
    with pytest.raises(ValueError, match=r"class\(es\) \[2\]"):
        probe(tx, ty, vx, vy)


@pytest.mark.parametrize("labels, match", [
    (np.array(["dog", "cat"] * 20), "training labels"), (np.arange(40) % 2 + 0.5, "whole numbers"),
])
def test_probe_refuses_bad_labels(labels, match):
    tx, _ = _features()
    vx, vy = _features(seed=1)
    with pytest.raises(ValueError, match=match):
        probe(tx, labels, vx, vy)


@pytest.mark.parametrize("kwargs, match", [({"weight_decays": (-1.0,)}, "weight_decays"),
                                           ({"val_fraction": 0.0}, "val_fraction")])
def test_probe_refuses_bad_settings(kwargs, match):
    tx, ty = _features()
    vx, vy = _features(seed=1)
    with pytest.raises(ValueError, match=match):
        probe(tx, ty, vx, vy, **kwargs)


def test_probe_multilabel_targets_must_be_binary():
    tx, _ = _features()
    vx, _ = _features(seed=1)
    y = torch.full((40, 3), 2.0)
    with pytest.raises(ValueError, match="0/1"):
        probe(tx, y, vx, y, task="multilabel")


# ------------------------------------------------------------------------------ configs and datasets


@pytest.mark.parametrize("kwargs, key", [({"norm_mean": float("nan")}, "norm_mean"),
                                         ({"norm_std": float("inf")}, "norm_std")])
def test_frontend_refuses_non_finite_norm_stats(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        FrontendConfig(**kwargs)


def test_datasets_skip_bad_files_with_a_reason(data):
    frontend = FrontendConfig(target_length=64)
    ds = PretrainDataset(read_manifest(data["mixed_tsv"]), frontend)
    reasons = {Path(item.path).name: item.reason for item in (ds[i] for i in range(len(ds))) if isinstance(item, Skipped)}
    assert set(reasons) == {"nan.wav", "trunc.wav", "one.wav"}
    assert "truncated" in reasons["trunc.wav"] and "non-finite" in reasons["nan.wav"]
    labelled = LabelledDataset([LabelledItem(data["trunc"], (0,)), LabelledItem(data["good0"], (1,))], frontend, 2,
                               False)
    assert isinstance(labelled[0], Skipped) and not isinstance(labelled[1], Skipped)


def test_loader_counts_skipped_clips_and_goes_on(data, caplog):
    ds = PretrainDataset(read_manifest(data["mixed_tsv"]), FrontendConfig(target_length=64), max_bad_fraction=0.5)
    loader = build_loader(ds, ResumableDistributedSampler(len(ds), shuffle=False), batch_size=7, train=False)
    batches = list(loader)
    assert sum(int(b["num_skipped"]) for b in batches) == 3 == loader.bad_this_epoch
    assert sum(len(b["index"]) for b in batches) == 4
    assert torch.isfinite(torch.cat([b["source"] for b in batches])).all()


def test_non_utf8_text_files_are_named(data):
    with pytest.raises(ConfigError, match=f"{data['utf8']}: not UTF-8"):
        load_config(TrainConfig, data["utf8"])
    with pytest.raises(ManifestError, match=str(data["utf8"])):
        read_manifest(data["utf8"])
    with pytest.raises(ManifestError, match=str(data["csv_utf8"])):
        read_path_label_csv(data["csv_utf8"])


def test_device_cuda_without_cuda_is_a_config_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="train.device=cuda"):
        dist.init_distributed("cuda")


@pytest.mark.parametrize("key, value", [("save_every", -1), ("keep_last", -2), ("max_bad_steps", 0),
                                        ("grad_accum", 0), ("max_steps", 0)])
def test_train_values_are_checked(key, value, tmp_path):
    with pytest.raises(ConfigError, match=f"train.{key}"):
        check_train_config(TrainConfig(out_dir=str(tmp_path), **{key: value}))


# ----------------------------------------------------------------------------------- recipes (main)


@pytest.mark.parametrize("overrides, needles", [
    (["train.max_stepz=3"], ["unknown config key train.max_stepz"]),
    (["data.batch_size=-4"], ["data.batch_size", ">= 1"]),
    (["data.num_workers=-1"], ["data.num_workers", ">= 0"]),
    (["data.prefetch_factor=0"], ["data.prefetch_factor"]),
    (["data.max_bad_fraction=2"], ["data.max_bad_fraction"]),
    (["train.save_every=-5"], ["train.save_every"]),
    (["train.device=tpu"], ["train.device"]),
    (["model.encoder.depth=two"], ["model.encoder.depth"]),
    (["optim.lr=-1"], ["optim.lr", ">= 0"]),
    (["optim.betas=[2, 3]"], ["optim.betas"]),
    (["optim.weight_decay=-0.1"], ["optim.weight_decay"]),
    (["data.train_manifest=/nonexistent.tsv"], ["/nonexistent.tsv"]),
])
def test_pretrain_recipe_refuses_bad_values(data, tmp_path, capsys, overrides, needles):
    code, _, err = run_main(PRETRAIN.main, ["--config", TINY, f"data.train_manifest={data['good_tsv']}",
                                            f"train.out_dir={tmp_path / 'run'}", *overrides], capsys)
    assert_error(code, err, *needles)
    assert not (tmp_path / "run").exists()


def test_pretrain_recipe_out_dir_is_a_file(data, capsys):
    code, _, err = run_main(PRETRAIN.main, ["--config", TINY, f"data.train_manifest={data['good_tsv']}",
                                            f"train.out_dir={data['file']}"], capsys)
    assert_error(code, err, "train.out_dir", str(data["file"]), "is a file")


def test_pretrain_recipe_cuda_without_cuda(data, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = run_main(PRETRAIN.main, ["--config", TINY, f"data.train_manifest={data['good_tsv']}",
                                            f"train.out_dir={tmp_path}", "train.device=cuda"], capsys)
    assert_error(code, err, "train.device=cuda", "not available")


def test_pretrain_recipe_non_utf8_config(data, capsys):
    code, _, err = run_main(PRETRAIN.main, ["--config", data["utf8"]], capsys)
    assert_error(code, err, str(data["utf8"]), "not UTF-8")


def test_pretrain_check_accepts_a_good_config(data, tmp_path, capsys):
    code, out, _ = run_main(PRETRAIN.main, ["--check", "--config", TINY, f"data.train_manifest={data['good_tsv']}",
                                            f"train.out_dir={tmp_path / 'run'}"], capsys)
    assert code == 0 and "config ok" in out and not (tmp_path / "run").exists()


def test_pretrain_disk_full_while_saving_is_one_line(data, tmp_path, capsys, monkeypatch):
    from safetensors import SafetensorError

    from eat.train import checkpoint

    def full(*args, **kwargs):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                              'message: "No space left on device" })')

    monkeypatch.setattr(checkpoint, "save_file", full)
    before = torch.get_num_threads()
    try:
        code, _, err = run_main(PRETRAIN.main, [
            "--config", TINY, f"data.train_manifest={data['good_tsv']}", f"train.out_dir={tmp_path / 'run'}",
            "train.max_steps=1", "data.batch_size=2", "data.num_workers=0", "train.tensorboard=false",
            "train.cpu_threads=1", "model.encoder.target_length=64"], capsys)
    finally:
        torch.set_num_threads(before)
    assert_error(code, err, "model.safetensors", "no space left on device")
    assert not list((tmp_path / "run").glob(".tmp_step_*"))


@pytest.mark.parametrize("args, needles", [
    (["data.batch_size=0"], ["data.batch_size"]),
    (["data.num_workers=-3"], ["data.num_workers"]),
    (["train.keep_last=-1"], ["train.keep_last"]),
])
def test_finetune_recipe_refuses_bad_values(tmp_path, capsys, args, needles):
    code, _, err = run_main(FINETUNE.main, ["--task", "esc50", "--esc50-root", tmp_path, "--out", tmp_path / "o",
                                            *args], capsys)
    assert_error(code, err, *needles)


def test_finetune_recipe_non_utf8_config(data, tmp_path, capsys):
    code, _, err = run_main(FINETUNE.main, ["--task", "generic", "--config", data["utf8"], "--out", tmp_path / "o"],
                            capsys)
    assert_error(code, err, str(data["utf8"]))


# --------------------------------------------------------------------------------------- tools (main)


def test_extract_features_skips_and_counts_bad_files(data, encoder, tmp_path, capsys):
    code, out, err = run_main(TOOLS["extract_features"].main, ["--encoder", encoder, "--manifest", data["mixed_tsv"],
                                                               "--out", tmp_path / "f", "--workers", 1], capsys)
    assert code in (0, None), err
    index = json.loads((tmp_path / "f" / "index.json").read_text())
    assert index["num_embedded"] == 4 and index["num_bad"] == 3
    assert {Path(p).name for p, _ in index["bad"]} == {"nan.wav", "trunc.wav", "one.wav"}
    from safetensors.torch import load_file

    assert torch.isfinite(load_file(tmp_path / "f" / "shard_00000.safetensors")["embeddings"]).all()
    assert "3 unreadable file(s) skipped" in out


@pytest.mark.parametrize("case", ["out_is_file", "manifest_utf8", "encoder_missing", "disk_full"])
def test_extract_features_errors(data, encoder, tmp_path, capsys, monkeypatch, case):
    args = {"--encoder": encoder, "--manifest": data["good_tsv"], "--out": tmp_path / "f"}
    needles: tuple[str, ...]
    if case == "out_is_file":
        args["--out"], needles = data["file"], (str(data["file"]),)
    elif case == "manifest_utf8":
        args["--manifest"], needles = data["utf8"], (str(data["utf8"]),)
    elif case == "encoder_missing":
        args["--encoder"], needles = tmp_path / "none", (str(tmp_path / "none"),)
    else:
        def full(*a, **k):
            raise OSError(errno.ENOSPC, "No space left on device", str(a[1]))

        import safetensors.torch  # the tool binds save_file from here when it runs

        monkeypatch.setattr(safetensors.torch, "save_file", full)
        needles = ("no space left on device", "shard_00000")
    code, _, err = run_main(TOOLS["extract_features"].main, [x for kv in args.items() for x in kv], capsys)
    assert_error(code, err, *needles)


def test_compute_norm_stats_skips_and_counts(data, capsys):
    code, out, err = run_main(TOOLS["compute_norm_stats"].main, [data["mixed_tsv"], "--json", "--quiet",
                                                                 "--target-length", 64], capsys)
    assert code in (0, None), err
    result = json.loads(out)
    assert result["skipped"] == 3 and result["clips"] == 4
    assert np.isfinite(result["mean"]) and np.isfinite(result["std"])


@pytest.mark.parametrize("which, extra, needles", [
    ("all_bad_tsv", [], ("none of the 2 clips",)), ("utf8", [], ("not UTF-8",)),
    ("good_tsv", ["--workers", "-1"], ("--workers",)), ("good_tsv", ["--num-mel-bins", "0"], ("num_mel_bins",)),
])
def test_compute_norm_stats_errors(data, capsys, which, extra, needles):
    code, _, err = run_main(TOOLS["compute_norm_stats"].main, [data[which], "--quiet", *extra], capsys)
    assert_error(code, err, str(data[which]) if which == "utf8" else "error:", *needles)


def _npz(path: Path, x, y) -> Path:
    np.savez(path, x=x, y=y)
    return path


@pytest.mark.parametrize("case, needles", [
    ("nan", ("training features", "NaN")), ("unseen", ("class(es) [2]",)), ("strings", ("training labels",)),
    ("missing", ("no such file",)),
])
def test_linear_probe_npz_errors(tmp_path, capsys, case, needles):
    tx, ty = _features()
    vx, vy = _features(seed=1)
    if case == "nan":
        tx[0, 0] = float("nan")
    if case == "unseen":
        vx, vy = _features(seed=1, classes=3)
    labels = np.array(["a", "b"] * 20) if case == "strings" else ty.numpy()
    train = _npz(tmp_path / "train.npz", tx.numpy(), labels)
    test = _npz(tmp_path / "test.npz", vx.numpy(), vy.numpy())
    if case == "missing":
        train = tmp_path / "none.npz"
    code, _, err = run_main(TOOLS["linear_probe"].main, ["--train-features", train, "--test-features", test], capsys)
    assert_error(code, err, *needles)


def test_linear_probe_non_utf8_label_csv(data, capsys):
    code, _, err = run_main(TOOLS["linear_probe"].main, ["--baseline", "logmel", "--train", data["csv_utf8"],
                                                         "--test", data["csv_utf8"]], capsys)
    assert_error(code, err, str(data["csv_utf8"]))


@pytest.mark.parametrize("verify", [False, True])
def test_make_manifest_leaves_out_and_lists_bad_files(data, tmp_path, capsys, verify):
    code, out, err = run_main(TOOLS["make_manifest"].main, [data["root"], tmp_path / "m.tsv", "--workers", 1]
                              + (["--verify"] if verify else []), capsys)
    assert code in (0, None), err
    names = {rel for rel, _ in read_manifest(tmp_path / "m.tsv").entries}
    bad = {"trunc.wav", "one.wav", "empty.wav", "text.wav"} | ({"nan.wav", "inf.wav"} if verify else set())
    assert names == {f"good{i}.wav" for i in range(4)} | ({"nan.wav", "inf.wav"} - bad)
    for name in bad:
        assert name in err
    assert "truncated" in err


def test_make_manifest_out_is_a_folder(data, capsys):
    code, _, err = run_main(TOOLS["make_manifest"].main, [data["root"], data["root"]], capsys)
    assert_error(code, err, str(data["root"]))


@pytest.mark.parametrize("tool, argv, needles", [
    ("export_encoder", ["{root}/nope", "{tmp}/out"], ("{root}/nope",)),
    ("export_encoder", ["{enc}", "{tmp}/out", "--class-names", "{utf8}"], ("not UTF-8", "{utf8}")),
    ("convert_official", ["{root}/nope.pt", "{tmp}/out"], ("{root}/nope.pt",)),
    ("convert_official", ["{hf}", "{tmp}/out"], ("{hf}/config.json", "not UTF-8")),
    ("prepare_esc50", ["{esc}", "{tmp}/out"], ("{esc}/meta/esc50.csv",)),
    ("prepare_spc2", ["{spc}", "{tmp}/out"], ("{spc}",)),
    ("prepare_audioset", ["{utf8}", "{root}", "{tmp}/as", "--class-csv", "{utf8}"], ("{utf8}",)),
    ("make_synthetic_data", ["{file}", "--num-clips", "1"], ("{file}",)),
    ("demo", ["--out", "{file}"], ("{file}",)),
    ("bench_pretrain", ["--loader", "{utf8}", "--loader-only"], ("{utf8}",)),
])
def test_tool_errors_are_one_line(data, encoder, tmp_path, capsys, tool, argv, needles):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_bytes(NOT_UTF8)
    (hf / "model.safetensors").write_bytes(b"\0" * 16)
    esc = tmp_path / "esc"
    (esc / "meta").mkdir(parents=True)
    (esc / "meta" / "esc50.csv").write_bytes(NOT_UTF8)
    spc = tmp_path / "spc"
    spc.mkdir()
    (spc / "validation_list.txt").write_bytes(NOT_UTF8)
    (spc / "testing_list.txt").write_bytes(NOT_UTF8)
    (spc / "yes").mkdir()
    names = {"root": data["root"], "tmp": tmp_path, "enc": encoder, "file": data["file"], "hf": hf, "esc": esc,
             "spc": spc, "utf8": data["utf8"]}
    code, _, err = run_main(TOOLS[tool].main, [a.format(**names) for a in argv], capsys)
    assert_error(code, err, *(n.format(**names) for n in needles))


# ------------------------------------------------------------------------------ real processes


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


@pytest.mark.parametrize("argv, needles", [
    (["recipes/pretrain_as2m.py", "--config", "{utf8}"], ("not UTF-8",)),
    (["tools/linear_probe.py", "--train-features", "{root}/none.npz", "--test-features", "{root}/none.npz"],
     ("no such file",)),
    (["tools/extract_features.py", "--encoder", "{enc}", "--manifest", "{tsv}", "--out", "{file}"], ("{file}",)),
])
def test_real_processes_print_one_line_and_no_traceback(data, encoder, argv, needles):
    names = {"utf8": data["utf8"], "root": data["root"], "enc": encoder, "tsv": data["good_tsv"], "file": data["file"]}
    proc = procs.run([sys.executable, *(a.format(**names) for a in argv)], capture_output=True, text=True,
                          cwd=ROOT, env=_env())
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for n in needles:
        assert n.format(**names) in lines[0]


def test_make_pretrain_with_a_typo_is_one_line_without_torchrun(tmp_path):
    """``make pretrain`` checks the config before torchrun starts ranks, so no ChildFailedError traceback."""
    venv = Path(sys.executable).parent.parent
    proc = procs.run(["make", "-s", "-o", str(venv / ".installed-stamp"), "pretrain", f"VENV={venv}",
                           f"CONFIG={TINY}", "ARGS=train.max_stepz=1"], capture_output=True, text=True, cwd=ROOT,
                          env=_env())
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and "ChildFailedError" not in proc.stderr + proc.stdout
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert errors == [errors[0]] and "unknown config key train.max_stepz" in errors[0]
