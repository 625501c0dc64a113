"""Export directories: exact round trips (encoder and classifier), no unpickling on load, strict config and
tensor checks with errors naming the key, atomic writes, and parity with the official tiny model's features."""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import procs
import pytest
import torch
from safetensors.torch import load_file, save_file

import eat
from eat.audio.fbank import FrontendConfig
from eat.checkpoint_export import export_checkpoint
from eat.config import to_dict
from eat.export import (
    ExportError,
    load_classifier,
    load_encoder,
    read_class_names,
    read_export,
    save_export,
)
from eat.features import FeatureExtractor
from eat.model.classifier import Classifier, ClassifierConfig
from eat.model.eat import eat_config
from eat.model.vit import Encoder

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
FRONTEND = FrontendConfig(target_length=256)


def _env():
    from eat.train.dist import DistEnv

    return DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def tiny_encoder(seed: int = 0) -> Encoder:
    torch.manual_seed(seed)
    return Encoder(eat_config("tiny").encoder).eval()


@pytest.fixture
def exported(tmp_path):
    enc = tiny_encoder()
    path = save_export(tmp_path / "tiny", enc.cfg, enc.state_dict(), FRONTEND, meta={"source": "unit test", "step": 7})
    return enc, path


def test_round_trip_gives_identical_features(exported):
    enc, path = exported
    fx = eat.load_encoder(path)
    x = torch.randn(2, 256, 128)
    assert torch.equal(fx(x), enc(x))
    clips = [torch.randn(16000), torch.randn(40000)]
    ref = FeatureExtractor(enc, FRONTEND).extract_features(clips, granularity="frame", layers=[0, -1])
    got = fx.extract_features(clips, granularity="frame", layers=[0, -1])
    assert torch.equal(got.embeddings, ref.embeddings)
    assert fx.frontend == FRONTEND and not fx.training


def test_config_json_layout(exported):
    _, path = exported
    doc = json.loads((path / "config.json").read_text())
    assert set(doc) == {"format", "format_version", "encoder", "frontend", "head", "meta"}
    assert doc["format"] == "eat-encoder" and doc["format_version"] == 1 and doc["head"] is None
    assert doc["encoder"] == to_dict(eat_config("tiny").encoder) | {"patch_stride": [16, 16]}
    assert doc["meta"]["source"] == "unit test" and doc["meta"]["step"] == 7
    assert doc["meta"]["toolkit_version"] == eat.__version__ and "created" in doc["meta"]
    assert all(k.startswith("encoder.") for k in load_file(path / "model.safetensors"))
    assert sorted(p.name for p in path.parent.iterdir()) == ["tiny"]  # no temp dirs left behind


def test_loading_never_unpickles(exported, monkeypatch):
    _, path = exported

    def refuse(*args, **kwargs):
        raise AssertionError("unpickling during load")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    fx = load_encoder(path)
    assert fx(torch.zeros(1, 32, 128)).shape == (1, 1 + 16, 96)


def test_bare_and_prefixed_keys_and_fp16_weights(tmp_path):
    enc = tiny_encoder()
    half = {f"encoder.{k}": v.half() for k, v in enc.state_dict().items()}
    path = save_export(tmp_path / "half", enc.cfg, half, FRONTEND)
    tensors = load_file(path / "model.safetensors")
    assert all(v.dtype == torch.float32 for v in tensors.values())
    assert torch.equal(tensors["encoder.blocks.0.attn.qkv.weight"], enc.blocks[0].attn.qkv.weight.half().float())


def test_classifier_round_trip(tmp_path):
    torch.manual_seed(1)
    clf = Classifier(ClassifierConfig(encoder=eat_config("tiny").encoder, num_classes=5)).eval()
    names = [f"class{i}" for i in range(5)]
    head = {"num_classes": 5, "prediction_mode": "cls", "head_norm_eps": 1e-6, "class_names": names}
    path = save_export(tmp_path / "clf", clf.cfg.encoder, clf.state_dict(), FRONTEND, head=head)
    loaded = eat.load_classifier(path)
    x = torch.randn(2, 256, 128)
    assert torch.equal(loaded(x), clf(x)) and loaded.class_names == names
    wave = torch.randn(24000)
    fb = loaded.classifier.encoder  # predict == fbank padded to the training length, then the classifier
    fx = FeatureExtractor(fb, FRONTEND)
    spec, frames = fx.fbank([wave])
    full = torch.cat([spec[0], torch.full((256 - frames[0], 128), fx.pad_value)])
    torch.testing.assert_close(loaded.predict([wave]), clf(full[None]), atol=1e-6, rtol=0)
    encoder_only = load_encoder(path)  # the encoder of a classifier export
    assert torch.equal(encoder_only(x), clf.encoder(x))


def test_errors_name_the_problem(exported, tmp_path):
    enc, path = exported
    with pytest.raises(ExportError, match="no classifier head"):
        load_classifier(path)
    with pytest.raises(ExportError, match="not found"):
        load_encoder(tmp_path / "nowhere")

    doc = json.loads((path / "config.json").read_text())
    for change, pattern in [
        ({"extra": 1}, "unknown key 'extra'"),
        ({"encoder": {**doc["encoder"], "embed_dims": 96}}, "encoder.embed_dims"),
        ({"frontend": {**doc["frontend"], "samplerate": 1}}, "frontend.samplerate"),
        ({"head": {"num_classes": 3, "labels": []}}, "head.labels"),
        ({"format": "something"}, "format is 'something'"),
        ({"format_version": 2}, "format_version 2"),
    ]:
        (path / "config.json").write_text(json.dumps({**doc, **change}))
        with pytest.raises(ExportError, match=pattern) as err:
            load_encoder(path)
        assert "\n" not in str(err.value) and "config.json" in str(err.value)
    (path / "config.json").write_text("{not json")
    with pytest.raises(ExportError, match="not valid JSON"):
        load_encoder(path)

    (path / "config.json").write_text(json.dumps(doc))
    tensors = load_file(path / "model.safetensors")
    tensors.pop("encoder.blocks.1.norm1.bias")
    tensors["encoder.blocks.0.mlp.fc1.bias"] = torch.zeros(7)
    tensors["encoder.surprise"] = torch.zeros(1)
    save_file(tensors, path / "model.safetensors")
    with pytest.raises(ExportError) as err:
        load_encoder(path)
    msg = str(err.value)
    assert "missing blocks.1.norm1.bias" in msg and "blocks.0.mlp.fc1.bias (7,) != (384,)" in msg and "surprise" in msg
    (path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ExportError, match="unreadable safetensors"):
        read_export(path)


def test_save_checks_before_writing_and_replaces_only_exports(tmp_path):
    enc = tiny_encoder()
    sd = enc.state_dict()
    with pytest.raises(ExportError, match="missing"):
        save_export(tmp_path / "bad", enc.cfg, {k: v for k, v in sd.items() if k != "pre_norm.weight"}, FRONTEND)
    assert list(tmp_path.iterdir()) == []
    path = save_export(tmp_path / "exp", enc.cfg, sd, FRONTEND)
    other = tiny_encoder(seed=5)
    save_export(path, other.cfg, other.state_dict(), FRONTEND)  # replacing an export is fine
    assert torch.equal(load_encoder(path).encoder.blocks[0].attn.qkv.weight, other.blocks[0].attn.qkv.weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="not an eat export"):
        save_export(tmp_path / "mine", enc.cfg, sd, FRONTEND)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


# ---------------------------------------------------------------------------------------------- the CLI


def run_tool(src: Path, out: Path, *flags: str | Path) -> str | None:
    """tools/export_encoder.py's work through :func:`eat.checkpoint_export.export_checkpoint` (what the tool calls);
    returns the tool's ``error: ...`` line for a failure, else None. The tool itself: test_tool_command_line."""
    args = [str(f) for f in flags]
    opt = lambda name: args[args.index(name) + 1] if name in args else None  # noqa: E731
    try:
        names = read_class_names(Path(opt("--class-names"))) if opt("--class-names") else None
        export_checkpoint(src, out, "--teacher" in args, opt("--frontend-preset"), None, names)
    except ExportError as e:
        return f"error: {e}"
    return None


def test_tool_command_line(tmp_path):
    """The tool is a thin command line over eat.export: it exports, and a bad input is one line on stderr."""
    enc = tiny_encoder()
    official_fairseq_checkpoint(tmp_path / "eat_tiny.pt")
    tool = [sys.executable, str(ROOT / "tools" / "export_encoder.py")]
    ok = procs.run([*tool, str(tmp_path / "eat_tiny.pt"), str(tmp_path / "exp")], capture_output=True, text=True)
    assert ok.returncode == 0 and "exported encoder of the fairseq-pretrain checkpoint" in ok.stdout, ok.stderr
    assert load_encoder(tmp_path / "exp").encoder.cfg.embed_dim == enc.cfg.embed_dim
    bad = procs.run([*tool, str(tmp_path / "missing.pt"), str(tmp_path / "o")], capture_output=True, text=True)
    assert bad.returncode != 0 and bad.stderr.strip() == f"error: {tmp_path / 'missing.pt'}: no such file or directory"


def official_fairseq_checkpoint(path: Path) -> dict:
    """The official tiny fixture re-packed as a fairseq checkpoint (nested ``_ema``, official cfg names)."""
    fx = torch.load(FIXTURES / "eat_tiny_parity.pt", weights_only=True)
    c = fx["config"]
    sd = {k: v for k, v in fx["state_dict"].items() if not k.startswith("_ema.")}
    sd["_ema"] = {k[len("_ema.") :]: v for k, v in fx["state_dict"].items() if k.startswith("_ema.")}
    image = {"patch_size": c["patch_size"], "in_chans": c["in_chans"], "num_extra_tokens": c["num_extra_tokens"],
             "target_length": c["target_length"], "mask_prob": c["mask_prob"], "mask_length": c["mask_length"],
             "decoder": {"decoder_dim": c["decoder_dim"], "decoder_groups": c["decoder_groups"],
                         "decoder_kernel": c["decoder_kernel"], "decoder_layers": c["decoder_layers"]}}
    model_cfg = {"_name": "data2vec_multi", "embed_dim": c["embed_dim"], "depth": c["depth"],
                 "num_heads": c["num_heads"], "norm_eps": c["norm_eps"], "layer_norm_first": False,
                 "modalities": {"image": image}}
    torch.save({"args": None, "cfg": {"model": model_cfg}, "model": sd}, path)
    return fx


def test_official_checkpoint_exports_and_reproduces_official_features(tmp_path):
    fx = official_fairseq_checkpoint(tmp_path / "eat_tiny.pt")
    assert run_tool(tmp_path / "eat_tiny.pt", tmp_path / "exp") is None
    extractor = load_encoder(tmp_path / "exp")
    with torch.no_grad():
        tokens = extractor(fx["source"])
    torch.testing.assert_close(tokens, fx["features"], atol=1e-5, rtol=0)
    meta = json.loads((tmp_path / "exp" / "config.json").read_text())["meta"]
    assert meta["kind"] == "official-fairseq-pretrain" and meta["source"].endswith("eat_tiny.pt")
    assert extractor.frontend.target_length == 256  # the checkpoint's own length
    # the teacher is a different network: its export must not reproduce the student's features
    assert run_tool(tmp_path / "eat_tiny.pt", tmp_path / "teacher", "--teacher") is None
    with torch.no_grad():
        assert not torch.allclose(load_encoder(tmp_path / "teacher")(fx["source"]), fx["features"], atol=1e-2)


def test_official_finetuned_checkpoint_reproduces_official_logits(tmp_path):
    ft = torch.load(FIXTURES / "eat_tiny_finetune_parity.pt", weights_only=True)
    c = ft["config"]
    image = {"patch_size": c["patch_size"], "in_chans": c["in_chans"], "num_extra_tokens": c["num_extra_tokens"],
             "target_length": c["target_length"]}
    pre = {"_name": "data2vec_multi", "embed_dim": c["embed_dim"], "depth": c["depth"], "num_heads": c["num_heads"],
           "norm_eps": c["norm_eps"], "modalities": {"image": image}}
    model_cfg = {"_name": "mae_image_classification", "prediction_mode": c["prediction_mode"],
                 "use_fc_norm": True, "pretrained_model_args": {"model": pre}}
    torch.save({"cfg": {"model": model_cfg}, "model": ft["state_dict"]}, tmp_path / "ft.pt")
    (tmp_path / "names.txt").write_text("".join(f"c{i}\n" for i in range(10)))
    assert run_tool(tmp_path / "ft.pt", tmp_path / "clf", "--class-names", tmp_path / "names.txt") is None
    clf = load_classifier(tmp_path / "clf")
    with torch.no_grad():
        torch.testing.assert_close(clf(ft["source"]), ft["logits"], atol=1e-5, rtol=0)
    assert clf.class_names[-1] == "c9" and clf.classifier.cfg.head_norm_eps == 1e-6


def test_our_pretraining_checkpoint_student_and_teacher(tmp_path):
    from eat.model.eat import EATModel
    from eat.train.checkpoint import save_checkpoint
    torch.manual_seed(0)
    model = EATModel(eat_config("tiny"))
    with torch.no_grad():
        model.teacher.blocks[0].attn.qkv.weight.add_(1.0)  # make teacher != student
    # the resolved config recipes/pretrain_as2m.py saves: model = preset + EATConfig, data.norm = preset name
    config = {"model": {"preset": "tiny", **to_dict(model.cfg)}, "data": {"norm": "esc50", "crop": "head"}}
    save_checkpoint(tmp_path / "run", 12, model, torch.optim.AdamW(model.parameters()), _env(), {}, {}, config=config)

    assert run_tool(tmp_path / "run", tmp_path / "student") is None  # run dir: newest step
    assert run_tool(tmp_path / "run" / "step_000012", tmp_path / "teacher", "--teacher") is None
    x = torch.randn(1, 256, 128)
    student, teacher = load_encoder(tmp_path / "student"), load_encoder(tmp_path / "teacher")
    assert torch.equal(student(x), model.student.eval()(x)) and torch.equal(teacher(x), model.teacher(x))
    assert student.frontend == FrontendConfig.from_preset("esc50", target_length=256)
    assert json.loads((tmp_path / "student" / "config.json").read_text())["meta"]["step"] == 12
    assert run_tool(tmp_path / "run", tmp_path / "s2", "--frontend-preset", "spc2") is None
    assert load_encoder(tmp_path / "s2").frontend == FrontendConfig.from_preset("spc2")


def test_our_finetuning_checkpoint(tmp_path):
    from eat.train.checkpoint import save_checkpoint
    from eat.train.finetune import FinetuneConfig

    torch.manual_seed(0)
    ft = FinetuneConfig()
    ft.model.preset, ft.model.prediction_mode = "tiny", "mean"
    ft.data.frontend = FrontendConfig.from_preset("esc50", target_length=256)
    clf = Classifier(ClassifierConfig(encoder=eat_config("tiny").encoder, num_classes=3, prediction_mode="mean"))
    holder = torch.nn.Module()  # recipes/finetune.py trains FinetuneModel, whose classifier sits at .classifier
    holder.classifier = clf
    save_checkpoint(tmp_path / "ft", 5, holder, torch.optim.AdamW(holder.parameters()), _env(), {}, {},
                    config=to_dict(ft))
    (tmp_path / "names.txt").write_text("a\nb\nc\n")
    assert run_tool(tmp_path / "ft", tmp_path / "clf", "--class-names", tmp_path / "names.txt") is None
    loaded = load_classifier(tmp_path / "clf")
    x = torch.randn(2, 256, 128)
    assert torch.equal(loaded(x), clf.eval()(x)) and loaded.class_names == ["a", "b", "c"]
    assert loaded.classifier.cfg.prediction_mode == "mean" and loaded.frontend == ft.data.frontend
    assert "EMA teacher" in run_tool(tmp_path / "ft", tmp_path / "x", "--teacher")
    (tmp_path / "four.txt").write_text("a\nb\nc\nd\n")
    assert "class_names must list 3" in run_tool(tmp_path / "ft", tmp_path / "x", "--class-names", tmp_path / "four.txt")


def test_cli_errors_are_one_line(tmp_path):
    for args, pattern in [
        ((tmp_path / "missing.pt", tmp_path / "o"), "no such file"),
        ((FIXTURES / "mask_stats.json", tmp_path / "o"), "mask_stats.json"),
    ]:
        msg = run_tool(*args)
        assert msg is not None and msg.startswith("error:") and pattern in msg and "\n" not in msg
    bad_run = tmp_path / "run" / "step_000001"
    bad_run.mkdir(parents=True)
    msg = run_tool(tmp_path / "run", tmp_path / "o")
    assert msg.startswith("error:") and "complete" in msg
    enc = tiny_encoder()
    save_export(tmp_path / "exp", enc.cfg, enc.state_dict(), FRONTEND)
    assert "already an exported encoder" in run_tool(tmp_path / "exp", tmp_path / "o2")
