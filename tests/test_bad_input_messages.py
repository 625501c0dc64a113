"""More bad input (issue 21, items 3-7): a Hugging Face ``config.json`` that is not what it should be, the
bad-clip policy of small and large sets, messages that named the wrong thing, ``--check`` with init weights
that do not fit, worker counts sized to the machine. Same rules as tests/test_bad_inputs.py: one line naming
the file or key and a non-zero exit, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import procs
import pytest
from safetensors.torch import save_file
from test_bad_inputs import TOOLS, Script, assert_error, run_main
from test_parity_official import official_checkpoint

from eat.config import ConfigError
from eat.model.convert import ConversionError, convert_checkpoint, read_hf_config, to_official
from eat.train.pretrain import load_init

ROOT = Path(__file__).resolve().parents[1]
HF_GOOD = {"embed_dim": 96, "depth": 3, "num_heads": 4, "max_length": 20, "img_size": [256, 128]}


# ------------------------------------------------------------------------- Hugging Face config.json (item 3)


@pytest.fixture(scope="module")
def hf_weights(tmp_path_factory) -> Path:
    """The tiny official fixture's encoder in the Hugging Face layout (model.safetensors only)."""
    conv = convert_checkpoint(official_checkpoint("finetune"))
    path = tmp_path_factory.mktemp("hfw") / "model.safetensors"
    save_file({k: v.contiguous() for k, v in to_official(conv.encoder, 3, layout="hf").items()}, path)
    return path


def _snapshot(tmp_path: Path, weights: Path, config: object | bytes) -> Path:
    snap = tmp_path / "snap"
    snap.mkdir()
    (snap / "model.safetensors").symlink_to(weights)
    cfg = snap / "config.json"
    cfg.write_bytes(config) if isinstance(config, bytes) else cfg.write_text(json.dumps(config))
    return snap


HF_CASES = [
    ([1, 2], ("top level must be a JSON object, got an array",)),
    ("EAT", ("top level must be a JSON object, got a string",)),
    ({**HF_GOOD, "img_size": 5}, ("img_size", "expected a list, got 5")),
    ({**HF_GOOD, "img_size": [5]}, ("img_size", "expected 2 values")),
    ({**HF_GOOD, "img_size": [5, 128]}, ("img_size[0] (5)", "patch_size (16)")),
    ({**HF_GOOD, "depth": "three"}, ("depth: expected an integer, got 'three'",)),
    ({**HF_GOOD, "num_heads": 0}, ("num_heads: must be positive",)),
    ({**HF_GOOD, "embed_dim": -96}, ("embed_dim: must be positive",)),
    ({**HF_GOOD, "mlp_ratio": float("nan")}, ("mlp_ratio",)),
    ({**HF_GOOD, "qkv_bias": "yes"}, ("qkv_bias: expected true/false",)),
    ({**HF_GOOD, "num_heads": 5}, ("embed_dim 96 is not divisible by num_heads 5",)),
    ({**HF_GOOD, "layer_norm_first": True}, ("layer_norm_first",)),
    ({k: v for k, v in HF_GOOD.items() if k != "depth"}, ("missing key 'depth'",)),
    (b"{not json", ("not valid JSON", "line 1")),
    (b"", ("not valid JSON",)),
]


@pytest.mark.parametrize("config, needles", HF_CASES)
@pytest.mark.parametrize("tool", ["convert_official", "export_encoder"])
def test_hf_config_errors_name_file_and_key(hf_weights, tmp_path, capsys, tool, config, needles):
    snap = _snapshot(tmp_path, hf_weights, config)
    code, _, err = run_main(TOOLS[tool].main, [snap, tmp_path / "out"], capsys)
    assert_error(code, err, f"{snap / 'config.json'}: ", *needles)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("config, needles", HF_CASES[:6])
def test_hf_config_errors_in_model_init(hf_weights, tmp_path, config, needles):
    snap = _snapshot(tmp_path, hf_weights, config)
    with pytest.raises(ConfigError) as info:
        load_init(snap)
    message = str(info.value)
    assert message.startswith(f"model.init: {snap / 'config.json'}: ") and "\n" not in message
    assert all(n in message for n in needles), message


def test_hf_config_that_is_fine_still_converts(hf_weights, tmp_path, capsys):
    snap = _snapshot(tmp_path, hf_weights, {**HF_GOOD, "architectures": ["EAT"], "stride": None})
    assert read_hf_config(snap / "config.json")["stride"] is None
    code, out, err = run_main(TOOLS["convert_official"].main, [snap, tmp_path / "out"], capsys)
    assert code in (0, None), err
    assert load_init(snap).student["blocks.2.mlp.fc2.weight"].shape == (96, 384)


def test_hf_config_folder_instead_of_file(hf_weights, tmp_path):
    snap = tmp_path / "snap"
    (snap / "config.json").mkdir(parents=True)
    (snap / "model.safetensors").symlink_to(hf_weights)
    with pytest.raises(ConversionError, match="config.json: is a folder"):
        read_hf_config(snap / "config.json")


@pytest.mark.parametrize("field, value, needles", [
    ("depth", "three", ("cfg.model.depth", "expected an integer")),
    ("modalities", [1], ("cfg.model.modalities", "expected a mapping")),
    ("norm_eps", "tiny", ("cfg.model.norm_eps", "expected a number")),
])
def test_fairseq_config_fields_are_typed(field, value, needles):
    ck = official_checkpoint("pretrain")
    ck["cfg"]["model"][field] = value
    with pytest.raises(ConversionError) as info:
        convert_checkpoint(ck)
    assert all(n in str(info.value) for n in needles), str(info.value)


# --------------------------------------------------------------------------------- bad-clip policy (item 4)


@pytest.mark.parametrize("total, fraction, clips, allowed", [
    (41, 0.01, 10, 10),  # a small fine-tuning set: one bad file (2.4 %) no longer stops it
    (300, 0.01, 10, 10), (2_000_000, 0.01, 10, 20_000),  # a large set: the fraction decides
    (5, 0.01, 10, 2), (2, 0.01, 10, 0), (1, 0.01, 10, 0),  # a tiny set: fewer than half may be bad
    (41, 0.01, 0, 0), (20, 0.15, 0, 3), (20, 0.5, 0, 10), (20, 1.0, 0, 20),  # the fraction alone, as before
])
def test_bad_clip_allowance(total, fraction, clips, allowed):
    from eat.data.loaders import bad_clip_allowance

    assert bad_clip_allowance(total, fraction, clips) == allowed


def _clip_manifest(root: Path, good: int, missing: int) -> Path:
    import numpy as np
    import soundfile

    from eat.data.manifest import write_manifest

    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(good):
        soundfile.write(root / f"c{i}.wav", np.full(800, 0.01 * (i + 1), np.float32), 16000)
        rows.append((f"c{i}.wav", 800))
    rows += [(f"gone{i}.wav", 800) for i in range(missing)]
    return write_manifest(root / "m.tsv", root, rows)


def _loader(manifest: Path, batch_size: int):
    from eat.audio.fbank import FrontendConfig
    from eat.data.datasets import PretrainDataset
    from eat.data.loaders import ResumableDistributedSampler, build_loader

    ds = PretrainDataset(manifest, FrontendConfig(target_length=16))
    return build_loader(ds, ResumableDistributedSampler(len(ds), seed=0), batch_size=batch_size, train=False)


def test_one_bad_clip_of_41_does_not_stop_a_run(tmp_path):
    loader = _loader(_clip_manifest(tmp_path, 40, 1), 8)
    assert sum(len(b["index"]) for b in loader) == 40 and loader.bad_this_epoch == 1


def test_a_manifest_whose_files_are_all_missing_stops_at_once_and_says_so(tmp_path):
    from eat.data.loaders import BadDataError

    with pytest.raises(BadDataError) as info:
        list(_loader(_clip_manifest(tmp_path, 0, 5), 4))
    message = str(info.value)
    assert message.startswith("4 of the first 4 clips read are unreadable (of 5 this epoch"), message
    assert "more than the 2 allowed" in message and "gone" in message and "file not found" in message


# ------------------------------------------------------------------------ messages that misled (item 5)


@pytest.fixture(scope="module")
def fx():
    import torch

    from eat.audio.fbank import FrontendConfig
    from eat.features import FeatureExtractor
    from eat.model.eat import eat_config
    from eat.model.vit import Encoder

    torch.manual_seed(0)
    return FeatureExtractor(Encoder(eat_config("tiny").encoder), FrontendConfig(target_length=256))


def test_extract_features_names_a_channels_last_array(fx):
    import numpy as np

    with pytest.raises(ValueError, match=r"shape \(48000, 8\) .* looks like \(n_samples, n_channels\)"):
        fx.extract_features(np.zeros((48000, 8), np.float32))


@pytest.mark.parametrize("lengths, match", [([-5, 100], r"lengths: expected 2 sample count\(s\) in 0..16000, got \[-5"),
                                            ([100.5, 9], "whole sample counts"), ([1, 2, 3], "expected 2"),
                                            ([100, 16000], r"audio clip 0: 100 samples, fewer than one")])
def test_extract_features_checks_lengths(fx, lengths, match):
    import torch

    with pytest.raises(ValueError, match=match):
        fx.extract_features(torch.zeros(2, 16000), lengths=lengths)


def test_export_of_a_checkpoint_that_does_not_fit_its_config_names_the_checkpoint(tmp_path, capsys):
    import torch

    from eat.config import to_dict
    from eat.model.eat import EATModel, eat_config
    from eat.train.checkpoint import save_checkpoint
    from eat.train.dist import DistEnv

    torch.manual_seed(0)
    model = EATModel(eat_config("tiny"))
    config = {"model": {"preset": "tiny", **to_dict(model.cfg)}, "data": {"norm": "esc50"}}
    config["model"]["encoder"]["depth"] = 2  # the run's config.yaml says 2 blocks, the weights have 3
    env = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    save_checkpoint(tmp_path / "run", 3, model, torch.optim.AdamW(model.parameters()), env, {}, {}, config=config)
    code, _, err = run_main(TOOLS["export_encoder"].main, [tmp_path / "run", tmp_path / "out"], capsys)
    message = assert_error(code, err, str(tmp_path / "run" / "step_000003" / "model.safetensors"), "config.yaml",
                           "unexpected encoder.blocks.2")
    assert str(tmp_path / "out") not in message


@pytest.mark.parametrize("device, match", [("bogus", "device: 'bogus' is not a device"),
                                          ("tpu", "'tpu' is not a device")])
def test_load_encoder_refuses_a_bad_device_in_one_line(tmp_path, device, match):
    import torch

    import eat
    from eat.audio.fbank import FrontendConfig
    from eat.export import save_export
    from eat.model.eat import eat_config
    from eat.model.vit import Encoder

    cfg = eat_config("tiny").encoder
    path = save_export(tmp_path / "e", cfg, Encoder(cfg).state_dict(), FrontendConfig(target_length=256))
    with pytest.raises(ConfigError, match=match):
        eat.load_encoder(path, device=device)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            eat.load_classifier(path, device="cuda")


# ------------------------------------------------------------------ worker counts sized to the machine (item 7)


@pytest.fixture
def two_cores(monkeypatch):
    import os

    from eat.data import loaders

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(loaders, "_said", set())
    return loaders


def test_auto_workers_follow_the_cores_this_process_may_use(two_cores, monkeypatch, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="eat.data.loaders"):
        assert two_cores.resolve_workers("auto") == 2
        assert two_cores.resolve_workers("auto") == 2
    assert [r.getMessage() for r in caplog.records] == [
        "data.num_workers=auto: 2 loader worker process(es) (2 CPU core(s) available to this process)"]
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(64)))
    assert two_cores.resolve_workers("auto") == 8  # at most 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    assert two_cores.resolve_workers("auto") == 4  # 64 cores shared by 16 ranks


def test_a_number_the_user_set_is_kept_and_said_once_in_our_words(two_cores, caplog):
    import logging
    import warnings

    from eat.audio.fbank import FrontendConfig
    from eat.data.datasets import PretrainDataset
    from eat.data.loaders import ResumableDistributedSampler, build_loader
    from eat.data.manifest import Manifest

    ds = PretrainDataset(Manifest(Path("/nonexistent"), [("a.wav", 16000)] * 4), FrontendConfig(target_length=16))
    with caplog.at_level(logging.INFO, logger="eat.data.loaders"), warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for _ in range(2):
            loader = build_loader(ds, ResumableDistributedSampler(4), batch_size=2, num_workers=8)
            loader.loader.check_worker_number_rationality()  # what PyTorch calls at every new iterator
    assert loader.loader.num_workers == 8
    assert not [w for w in seen if "worker" in str(w.message)]
    notes = [r.getMessage() for r in caplog.records]
    assert notes == ["note: data.num_workers=8 loader worker processes, more than the 2 CPU core(s) available to "
                     "this process; kept as set (data.num_workers=auto sizes it to the machine)"]


@pytest.mark.parametrize("value, ok", [("auto", True), ("0", True), ("3", True), ("many", False), ("-1", False)])
def test_num_workers_setting(value, ok, tmp_path, capsys):
    from test_bad_inputs import PRETRAIN

    manifest = tmp_path / "m.tsv"
    manifest.write_text("/x\na.wav\t16000\n")
    code, out, err = run_main(PRETRAIN.main, ["--check", "--config", ROOT / "recipes/configs/pretrain_own_data.yaml",
                                              f"data.train_manifest={manifest}", f"data.num_workers={value}",
                                              f"train.out_dir={tmp_path / 'run'}"], capsys)
    if ok:
        assert code in (0, None) and "config ok" in out, err
    else:
        assert_error(code, err, "data.num_workers")


@pytest.mark.parametrize("tool, argv", [
    ("make_manifest", ["{root}", "{root}/m.tsv"]), ("extract_features", ["--encoder", "{root}", "--manifest",
                                                                         "{root}/m.tsv", "--out", "{root}/f"]),
    ("compute_norm_stats", ["{root}/m.tsv"]),
])
def test_workers_means_the_same_in_every_tool(tool, argv, tmp_path, capsys):
    code, _, err = run_main(TOOLS[tool].main, [a.format(root=tmp_path) for a in argv] + ["--workers", "-1"], capsys)
    assert_error(code, err, "--workers: must be >= 0 (0: no worker threads or processes), got -1")


# ---------------------------------------------------- --check reads model.init's shapes before ranks (item 6)


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory) -> Path:
    import torch

    from eat.audio.fbank import FrontendConfig
    from eat.export import save_export
    from eat.model.eat import eat_config
    from eat.model.vit import Encoder

    torch.manual_seed(0)
    cfg = eat_config("tiny").encoder
    return save_export(tmp_path_factory.mktemp("init") / "tiny", cfg, Encoder(cfg).state_dict(),
                       FrontendConfig(target_length=256))


def _check(capsys, tmp_path, init, *overrides, config="pretrain_own_data.yaml"):
    from test_bad_inputs import PRETRAIN

    manifest = tmp_path / "m.tsv"
    manifest.write_text("/x\na.wav\t16000\n")
    return run_main(PRETRAIN.main, ["--check", "--config", ROOT / "recipes" / "configs" / config,
                                    f"data.train_manifest={manifest}", f"model.init={init}",
                                    f"train.out_dir={tmp_path / 'run'}", *overrides], capsys)


def test_check_refuses_init_weights_that_do_not_fit_reading_headers_only(tiny_export, tmp_path, capsys, monkeypatch):
    import safetensors.torch
    import torch

    import eat.export

    def no_data(*args, **kwargs):
        raise AssertionError("--check read tensor data")

    monkeypatch.setattr(safetensors.torch, "load_file", no_data)
    monkeypatch.setattr(eat.export, "load_file", no_data)
    monkeypatch.setattr(torch.nn.Module, "load_state_dict", no_data)
    code, _, err = _check(capsys, tmp_path, tiny_export)  # the base preset: 768 wide, the export: 96
    assert_error(code, err, f"model.init: exported encoder {tiny_export} does not fit the model",
                 "(96,) vs (768,)", "model.preset=base")
    assert not (tmp_path / "run").exists()
    code, out, err = _check(capsys, tmp_path, tiny_export, "model.preset=tiny")
    assert code in (0, None) and "config ok" in out, err


def test_check_reads_an_official_torch_checkpoint_by_memory_map(tmp_path, capsys, monkeypatch):
    import torch

    from eat.model import convert

    path = tmp_path / "official.pt"
    torch.save(official_checkpoint("pretrain"), path)
    monkeypatch.setattr(convert, "load_weights_only", lambda *a, **k: pytest.fail("read the whole file"))
    code, _, err = _check(capsys, tmp_path, path)
    assert_error(code, err, f"model.init: fairseq-pretrain checkpoint {path} does not fit the model", "vs (768")
    code, out, err = _check(capsys, tmp_path, path, "model.preset=tiny", "model.encoder.max_time_patches=20")
    assert code in (0, None) and "config ok" in out, err


def test_make_pretrain_with_weights_that_do_not_fit_is_one_line_without_torchrun(tiny_export, tmp_path):
    import sys

    from test_bad_inputs import _env

    manifest = tmp_path / "m.tsv"
    manifest.write_text("/x\na.wav\t16000\n")
    venv = Path(sys.executable).parent.parent
    proc = procs.run(["make", "-s", "-o", str(venv / ".installed-stamp"), "pretrain", f"VENV={venv}",
                           f"INIT={tiny_export}", f"ARGS=data.train_manifest={manifest} train.out_dir={tmp_path / 'r'}"],
                          capture_output=True, text=True, cwd=ROOT, env=_env())
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and "ChildFailedError" not in proc.stderr + proc.stdout
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "does not fit the model" in errors[0], proc.stderr


# --------------------------------------------------------- found by running every tool with wrong-shaped input


@pytest.mark.parametrize("content, needles", [
    (b"[1, 2]", ("no 'tasks' object",)), (b'"x"', ("no 'tasks' object",)), (b"", ("not valid JSON",)),
    (b'{"tasks": {"esc50": {"rows": [{"source": "a"}]}}}', ("tasks.esc50.rows[0]", "missing key 'layers'")),
    (b'{"tasks": {"esc50": {"rows": [{"source": "a", "layers": "-1", "pooling": "cls", "score": "high", "dim": 8, '
     b'"weight_decay": 0}]}}}', ("tasks.esc50.rows[0].score", "expected a number")),
])
@pytest.mark.parametrize("tool", ["plot_probe_curve", "probe_protocol"])
def test_probe_json_readers_name_the_file_and_entry(tmp_path, capsys, tool, content, needles):
    path = tmp_path / "probe.json"
    path.write_bytes(content)
    argv = ["--probe", path] if tool == "plot_probe_curve" else ["--summarize", path]
    code, _, err = run_main(Script(ROOT / "tools" / f"{tool}.py").main, argv, capsys)
    assert_error(code, err, str(path), *needles)


@pytest.mark.parametrize("size", ["inf", "nan", "-1", "0"])
def test_make_shards_shard_size_must_be_a_positive_number(tmp_path, capsys, size):
    manifest = tmp_path / "m.tsv"
    manifest.write_text(f"{tmp_path}\na.wav\t16000\n")
    code, _, err = run_main(Script(ROOT / "tools" / "make_shards.py").main, [manifest, tmp_path / "out", "--shard-size", size], capsys)
    assert_error(code, err, "--shard-size", "positive")


@pytest.mark.parametrize("content", [b"", b"hello world\n", b"[1, 2, 3]\n", b"\x80\x04\x95\x0b"])
def test_a_file_that_is_no_checkpoint_says_what_it_is(tmp_path, capsys, content):
    path = tmp_path / "weights.pt"
    path.write_bytes(content)
    code, _, err = run_main(TOOLS["convert_official"].main, [path, tmp_path / "out"], capsys)
    message = assert_error(code, err, str(path), "not a readable PyTorch checkpoint")
    assert any(s in message for s in ("empty file", "not a torch.save file (it starts with", "a plain Python pickle"))
    assert "Unsupported operand" not in message and "UserWarning" not in err


def test_extract_features_fails_when_no_clip_could_be_read(tmp_path, capsys):
    from eat.audio.fbank import FrontendConfig
    from eat.export import save_export
    from eat.model.eat import eat_config
    from eat.model.vit import Encoder

    cfg = eat_config("tiny").encoder
    enc = save_export(tmp_path / "e", cfg, Encoder(cfg).state_dict(), FrontendConfig(target_length=256))
    manifest = tmp_path / "m.tsv"
    manifest.write_text(f"{tmp_path}\ngone.wav\t16000\n")
    code, _, err = run_main(TOOLS["extract_features"].main, ["--encoder", enc, "--manifest", manifest, "--out",
                                                             tmp_path / "f", "--workers", 0], capsys)
    assert_error(code, err, str(manifest), "none of the 1 clips could be read", "gone.wav")


def test_dataset_folders_that_are_files_say_so(tmp_path, capsys):
    file = tmp_path / "a_file"
    file.write_text("x")
    for tool, needle in (("prepare_esc50", "a file, not the ESC-50 folder"),
                         ("prepare_spc2", "a file, not the Speech Commands v2 folder")):
        code, _, err = run_main(TOOLS[tool].main, [file, tmp_path / "out"], capsys)
        assert_error(code, err, str(file), needle)


@pytest.mark.parametrize("override, needles", [
    ("model.ema_decay=nan", ("ema_decay", "[0, 1]")), ("model.ema_end_decay=2", ("ema_end_decay",)),
    ("model.decoder_dim=-1", ("decoder_dim", ">= 1")), ("model.decoder_groups=5", ("decoder_groups 5",)),
    ("model.mask_noise_std=inf", ("mask_noise_std",)), ("data.norm_mean=nan", ("norm_mean",)),
    ("data.norm_std=0", ("norm_std",)), ("model.encoder.num_heads=0", ("model.encoder", "num_heads: must be >= 1")),
    ("model.encoder.mlp_ratio=-1", ("mlp_ratio",)), ("data.max_bad_clips=-1", ("data.max_bad_clips",)),
])
def test_check_refuses_values_that_would_train_silently_wrong(tmp_path, capsys, override, needles):
    from test_bad_inputs import PRETRAIN

    manifest = tmp_path / "m.tsv"
    manifest.write_text("/x\na.wav\t16000\n")
    extra = ["data.norm_std=1"] if override.startswith("data.norm_mean") else \
        ["data.norm_mean=0"] if override.startswith("data.norm_std") else []
    code, _, err = run_main(PRETRAIN.main, ["--check", "--config", ROOT / "recipes/configs/tiny.yaml",
                                            f"data.train_manifest={manifest}", override, *extra], capsys)
    assert_error(code, err, *needles)


@pytest.mark.parametrize("content, needles", [("", ("empty manifest",)), ("/x\n", ("lists no clips",)),
                                              ("/x\na.wav\t1\textra\n", ("3 tab-separated columns",))])
def test_check_reads_the_manifest(tmp_path, capsys, content, needles):
    from test_bad_inputs import PRETRAIN

    manifest = tmp_path / "m.tsv"
    manifest.write_text(content)
    code, _, err = run_main(PRETRAIN.main, ["--check", "--config", ROOT / "recipes/configs/tiny.yaml",
                                            f"data.train_manifest={manifest}"], capsys)
    assert_error(code, err, str(manifest), *needles)


@pytest.mark.parametrize("argv, needles", [(["--workers", "-1"], ("--workers",)), (["--threads", "0"], ("--threads",)),
                                           (["--device", "bogus"], ("--device", "'bogus'"))])
def test_bench_frontend_refuses_bad_counts_before_measuring(capsys, argv, needles):
    code, out, err = run_main(TOOLS["bench_frontend"].main, argv, capsys)
    assert_error(code, err, *needles)
    assert "(a) fbank" not in out


def test_finetune_task_with_a_config_that_sets_no_format_says_so(tmp_path, capsys):
    from test_bad_inputs import FINETUNE

    config = tmp_path / "c.yaml"
    config.write_text("{}\n")
    code, _, err = run_main(FINETUNE.main, ["--task", "generic", "--config", config, "--out", tmp_path / "o"], capsys)
    assert_error(code, err, "data.format is esc50", str(config), "only --task esc50")


def test_loading_a_hugging_face_snapshot_as_an_export_says_convert_it(hf_weights, tmp_path, tiny_export):
    import eat
    from eat.export import ExportError

    snap = _snapshot(tmp_path, hf_weights, HF_GOOD)
    with pytest.raises(ExportError, match="a Hugging Face EAT config.json, not an eat export; convert"):
        eat.load_encoder(snap)
    assert eat.load_encoder(tiny_export / "model.safetensors").encoder.cfg.embed_dim == 96  # a file of the export


@pytest.mark.parametrize("audio, match", [("not audio", "got a str: 'not audio'"), ({"a": 1}, "got a dict")])
def test_audio_that_is_no_array_says_what_it_got(fx, audio, match):
    with pytest.raises(ValueError, match=f"not an array of samples \\({match}"):
        fx.extract_features(audio)


def test_check_refuses_a_resume_target_that_does_not_exist(tmp_path, capsys):
    from test_bad_inputs import PRETRAIN

    manifest = tmp_path / "m.tsv"
    manifest.write_text("/x\na.wav\t16000\n")
    code, _, err = run_main(PRETRAIN.main, ["--check", "--config", ROOT / "recipes/configs/tiny.yaml",
                                            f"data.train_manifest={manifest}", "--resume", tmp_path / "nope"], capsys)
    assert_error(code, err, "train.resume", str(tmp_path / "nope"), "no such run")


def test_prepare_esc50_error_is_not_printed_onto_its_progress_line(tmp_path):
    import numpy as np
    import soundfile

    root = tmp_path / "esc"
    (root / "meta").mkdir(parents=True)
    (root / "audio").mkdir()
    rows = ["filename,fold,target,category,esc10,src_file,take"]
    for i in range(10):
        name = f"{1 + i % 5}-{i}-A-0.wav"
        rows.append(f"{name},{1 + i % 5},{i % 2},c{i % 2},False,{i},A")
        if i == 6:
            (root / "audio" / name).write_bytes(b"junk")
        else:
            soundfile.write(root / "audio" / name, np.zeros(1600, np.float32), 16000)
    (root / "meta" / "esc50.csv").write_text("\n".join(rows) + "\n")
    import sys

    from test_bad_inputs import _env

    proc = procs.run([sys.executable, str(ROOT / "tools" / "prepare_esc50.py"), str(root), str(tmp_path / "o")],
                          capture_output=True, text=True, env=_env())
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    line = next(ln for ln in proc.stderr.split("\n") if "error:" in ln)
    shown = line.rsplit("\r", 1)[-1]  # what a terminal shows: the text after the last carriage return
    assert shown.startswith("error: ") and "2-6-A-0.wav: cannot decode" in shown, proc.stderr


@pytest.mark.parametrize("tool", ["prepare_spc2", "prepare_audioset"])
def test_prepare_tools_name_non_utf8_files_in_our_words(tmp_path, capsys, tool):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe not utf-8\n")
    if tool == "prepare_spc2":
        (tmp_path / "yes").mkdir()
        (tmp_path / "validation_list.txt").write_bytes(bad.read_bytes())
        (tmp_path / "testing_list.txt").write_bytes(bad.read_bytes())
        argv, named = [tmp_path, tmp_path / "out"], tmp_path / "validation_list.txt"
    else:
        classes = tmp_path / "classes.csv"
        classes.write_text("index,mid,display_name\n0,/m/a,A\n")
        argv, named = [bad, tmp_path, tmp_path / "out", "--class-csv", classes], bad
    code, _, err = run_main(TOOLS[tool].main, argv, capsys)
    message = assert_error(code, err, str(named), "not UTF-8 text")
    assert "codec can't decode" not in message


def test_end_progress_bars_ends_an_open_bar_with_a_newline():
    import io

    from tqdm import tqdm

    from eat.cli import end_progress_bars

    out = io.StringIO()
    bar = tqdm(total=10, desc="checking clips", file=out, leave=False)
    bar.update(3)
    end_progress_bars()  # what cli_main does before printing its error line
    assert out.getvalue().endswith("\n") and "3/10" in out.getvalue().rsplit("\r", 1)[-1]


@pytest.mark.parametrize("value", ["-1", "1.5", "nan"])
def test_finetune_drop_path_is_named_with_its_section(tmp_path, capsys, value):
    from eat.train.finetune import ModelSection, build_classifier

    with pytest.raises(ConfigError, match=r"^model.drop_path: must lie in \[0, 1\)"):
        build_classifier(ModelSection(preset="tiny", drop_path=float(value)), 3, 256)
