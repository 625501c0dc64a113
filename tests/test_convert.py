"""Official <-> our key mapping: every EAT-base key and shape, round trips, HF layout, refusals, the CLI tool."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import procs
import pytest
import torch
from safetensors.torch import save_file
from test_parity_official import official_checkpoint

from eat import load_classifier, load_encoder
from eat.checkpoint_export import export_official
from eat.export import ExportError, read_class_names
from eat.model.classifier import Classifier, ClassifierConfig
from eat.model.convert import (
    ConversionError,
    convert_checkpoint,
    decoder_key_map,
    encoder_key_map,
    load_official,
    to_official,
)
from eat.model.eat import EATModel, eat_config

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
BASE_KEYS = json.loads((FIXTURES / "eat_base_keys.json").read_text())


def _official_to_ours(key: str) -> str:
    """Our EATModel key for an official EAT-base pretraining key (map of eat.model.convert)."""
    enc, dec = encoder_key_map(12), decoder_key_map(6)
    if key.startswith("_ema."):
        return "teacher." + enc[key[len("_ema.") :]]
    return "decoder." + dec[key] if key in dec else "student." + enc[key]


def test_every_base_pretraining_key_maps_with_its_shape_both_ways():
    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in EATModel(eat_config("base")).state_dict().items()}
    official = {e["key"]: tuple(e["shape"]) for e in BASE_KEYS["pretraining"]["keys"]}
    assert len(official) == 314
    mapped = {_official_to_ours(k): shape for k, shape in official.items()}
    assert mapped == ours  # one-to-one, same shapes, nothing left over on either side
    # our -> official through to_official on meta tensors
    sd = {k: torch.empty(s, device="meta") for k, s in ours.items()}
    back = to_official(
        {k[8:]: v for k, v in sd.items() if k.startswith("student.")}, 12,
        decoder={k[8:]: v for k, v in sd.items() if k.startswith("decoder.")},
        teacher={k[8:]: v for k, v in sd.items() if k.startswith("teacher.")}, nest_ema=False,
    )
    assert {k: tuple(v.shape) for k, v in back.items()} == official
    trainable = sum(e["numel"] for e in BASE_KEYS["pretraining"]["keys"] if e["trainable"])
    assert trainable == BASE_KEYS["pretraining"]["numel_student_trainable"] == 87_840_000


def test_every_base_finetuning_key_maps_to_the_classifier():
    official = {e["key"]: tuple(e["shape"]) for e in BASE_KEYS["finetuning"]["keys"]}
    with torch.device("meta"):
        clf = Classifier(ClassifierConfig(encoder=eat_config("base").encoder, num_classes=527))
    ours = {k: tuple(v.shape) for k, v in clf.state_dict().items()}
    enc = encoder_key_map(12)
    mapped = {("encoder." + enc[k[len("model.") :]]) if k.startswith("model.") else k: s for k, s in official.items()}
    assert mapped == ours
    head = {k: torch.empty(s, device="meta") for k, s in ours.items() if not k.startswith("encoder.")}
    encoder = {k[8:]: torch.empty(s, device="meta") for k, s in ours.items() if k.startswith("encoder.")}
    back = to_official(encoder, 12, head=head)
    assert {k: tuple(v.shape) for k, v in back.items()} == official


def test_round_trip_of_the_official_fixture():
    ck = official_checkpoint("pretrain")
    conv = convert_checkpoint(ck)
    assert conv.source_format == "fairseq-pretrain" and conv.notes == []
    cfg = conv.eat_cfg
    assert (cfg.encoder.embed_dim, cfg.encoder.depth, cfg.encoder.num_heads, cfg.encoder.max_time_patches) == (96, 3, 4, 20)
    assert (cfg.clone_batch, cfg.decoder_layers, cfg.average_top_k_layers, cfg.encoder.target_length) == (4, 2, 3, 256)
    back = to_official(conv.encoder, 3, decoder=conv.decoder, teacher=conv.teacher)
    original = ck["model"]
    assert set(back) == set(original) and set(back["_ema"]) == set(original["_ema"])
    for k, v in original.items():
        if k != "_ema":
            assert torch.equal(back[k], v.float()), k
    for k, v in original["_ema"].items():
        assert torch.equal(back["_ema"][k], v), k
    ft = official_checkpoint("finetune")
    fconv = convert_checkpoint(ft)
    fback = to_official(fconv.encoder, 3, head=fconv.head)
    assert set(fback) == set(ft["model"])
    assert all(torch.equal(fback[k], v.float()) for k, v in ft["model"].items())


def _hf_checkpoint(tmp_path: Path) -> tuple[Path, dict]:
    fconv = convert_checkpoint(official_checkpoint("finetune"))
    sd = to_official(fconv.encoder, 3, head=fconv.head, layout="hf")
    assert "model.pre_norm.weight" in sd and "model.fc_norm.weight" in sd and "model.blocks.2.mlp.fc2.bias" in sd
    cfg = {"embed_dim": 96, "depth": 3, "num_heads": 4, "patch_size": 16, "stride": 16, "in_chans": 1,
           "mel_bins": 128, "max_length": 20, "img_size": [256, 128], "norm_eps": 1e-6,
           "layer_norm_first": False, "model_variant": "finetune", "num_classes": 10}
    snap = tmp_path / "hf"
    snap.mkdir()
    save_file({k: v.contiguous() for k, v in sd.items()}, snap / "model.safetensors")
    (snap / "config.json").write_text(json.dumps(cfg))
    return snap, sd


def test_hugging_face_layout(tmp_path):
    snap, sd = _hf_checkpoint(tmp_path)
    conv = load_official(snap)
    ref = convert_checkpoint(official_checkpoint("finetune"))
    assert conv.source_format == "hf-finetune" and conv.head_norm_eps == 1e-5  # HF fc_norm is a default LayerNorm
    assert conv.encoder_cfg == ref.encoder_cfg
    assert all(torch.equal(conv.encoder[k], ref.encoder[k]) for k in ref.encoder)
    pre = {k: v for k, v in sd.items() if not k.startswith(("model.fc_norm.", "model.head."))}
    assert convert_checkpoint(pre, {"embed_dim": 96, "depth": 3, "num_heads": 4, "max_length": 20}).head is None
    with pytest.raises(ConversionError, match="config.json"):
        convert_checkpoint(pre)


def test_refuses_unknown_missing_and_misshapen_keys():
    ck = official_checkpoint("pretrain")
    ck["model"]["blocks.0.attn.extra_bias"] = torch.zeros(3)
    del ck["model"]["blocks.1.norm2.bias"]
    with pytest.raises(ConversionError, match=r"unknown keys: blocks\.0\.attn\.extra_bias; missing keys: blocks\.1\.norm2\.bias"):
        convert_checkpoint(ck)
    ck = official_checkpoint("pretrain")
    ck["model"]["blocks.0.mlp.fc1.weight"] = torch.zeros(5, 96)
    with pytest.raises(ConversionError, match=r"blocks\.0\.mlp\.fc1\.weight \(5, 96\)"):
        convert_checkpoint(ck)
    ck = official_checkpoint("pretrain")
    ck["cfg"]["model"]["layer_norm_first"] = True
    with pytest.raises(ConversionError, match="adds the MLP output twice"):
        convert_checkpoint(ck)
    ck = official_checkpoint("pretrain")
    del ck["cfg"]["model"]["num_heads"]
    with pytest.raises(ConversionError, match="cfg.model.num_heads"):
        convert_checkpoint(ck)
    ck = official_checkpoint("pretrain")
    ck["cfg"]["model"]["loss_beta"] = 0.5
    conv = convert_checkpoint(ck)  # the encoder still converts; the pretraining config is not offered
    assert conv.eat_cfg is None and "loss_beta" in conv.notes[0]
    with pytest.raises(ConversionError, match="not an official EAT checkpoint"):
        convert_checkpoint({"weight": torch.zeros(1)})


def test_load_official_files(tmp_path):
    good = tmp_path / "eat.pt"
    torch.save(official_checkpoint("pretrain"), good)
    assert load_official(good).teacher is not None
    legacy = tmp_path / "legacy.pt"
    ck = official_checkpoint("pretrain")
    ck["args"] = argparse.Namespace(arch="data2vec_multi")  # an object weights_only=True will not unpickle
    torch.save(ck, legacy)
    with pytest.raises(ConversionError, match=r"argparse\.Namespace.*weights_only=True.*re-save"):
        load_official(legacy)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ConversionError, match="corrupt.pt: not a readable PyTorch checkpoint") as e:
        load_official(corrupt)
    # one line naming the problem, not torch's advice to retry with weights_only=False
    assert "\n" not in str(e.value) and "weights_only" not in str(e.value)
    assert str(e.value).endswith("(not a torch.save file (it starts with b'not a ch'))")  # what the bytes are
    with pytest.raises(ConversionError, match="no such file"):
        load_official(tmp_path / "missing.pt")


def test_convert_official_tool(tmp_path):
    """tools/convert_official.py is a thin command line over eat.checkpoint_export.export_official: the library calls
    check what is written, one run of the tool checks its output and its one-line error."""
    pre, fine = tmp_path / "pt.pt", tmp_path / "ft.pt"
    torch.save(official_checkpoint("pretrain"), pre)
    torch.save(official_checkpoint("finetune"), fine)
    fx = torch.load(FIXTURES / "eat_tiny_parity.pt", weights_only=True)
    ft = torch.load(FIXTURES / "eat_tiny_finetune_parity.pt", weights_only=True)

    tool = [sys.executable, str(ROOT / "tools" / "convert_official.py")]
    proc = procs.run([*tool, str(pre), str(tmp_path / "enc")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "encoder of the fairseq-pretrain checkpoint" in proc.stdout
    extractor = load_encoder(tmp_path / "enc")
    with torch.no_grad():
        features = extractor.encoder(fx["source"])
    assert (features - fx["features"]).abs().max() < 1e-5
    assert extractor.frontend.target_length == 256

    export_official(pre, tmp_path / "teacher", teacher=True)
    teacher = load_encoder(tmp_path / "teacher").encoder.state_dict()
    assert torch.equal(teacher["blocks.0.norm1.weight"], fx["state_dict"]["_ema.blocks.0.norm1.weight"])

    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"class {i}" for i in range(10)))
    export_official(fine, tmp_path / "clf", preset="esc50", class_names=read_class_names(names))
    clf = load_classifier(tmp_path / "clf")
    with torch.no_grad():
        logits = clf(ft["source"])
    assert (logits - ft["logits"]).abs().max() < 1e-6
    assert clf.class_names[3] == "class 3"

    with pytest.raises(ExportError, match="no EMA teacher"):
        export_official(fine, tmp_path / "y", teacher=True)
    proc = procs.run([*tool, str(tmp_path / "nope.pt"), str(tmp_path / "x")], capture_output=True, text=True)
    assert proc.returncode != 0 and proc.stderr.strip().startswith("error: ") and "no such file" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
