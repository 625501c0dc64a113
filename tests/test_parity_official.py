"""Parity with the official EAT code (fp32, CPU), using the recorded tiny fixtures.

The weights go through the real conversion path: the fixture's official-named state dict is wrapped in a
fairseq-style checkpoint (``cfg`` + ``model`` with the nested ``_ema``), converted, and loaded into
``EATModel`` / ``Classifier`` built from the converted configs.

Max abs differences measured on this machine (torch 2.11, CPU, float32) against the official values:

* eval ``features`` 1.2e-6; student output (reordered to ascending grid order) 9.5e-7;
  teacher targets ``y`` 2.4e-6, ``cls_target`` 5.3e-7; decoder ``pred_masked`` 8.3e-7;
  per-clone CLS loss tensor 3.7e-4 on values up to 904 (relative 4e-7)
* ``loss`` relative 7.8e-8, ``frame_loss_sum`` 1.7e-7, ``cls_loss_sum`` 1.1e-7; zero-noise variant the same;
  ``pred_var`` / ``target_var`` bitwise
* gradients of the 6 recorded parameters <= 1.2e-6 (max |grad| ~ 4)
* EMA step: decay and teacher values after the step bitwise equal
* fine-tuned ``logits`` 6.0e-8, ``cls_feature`` 7.2e-7

The residual differences come from SDPA versus the official explicit softmax attention (the README's
float64 run shows the official float32 values themselves are only ~2e-6 from exact). Tolerances: 1e-5
for activations and gradients, rtol 1e-5 for losses, 1e-7 for EMA values, 1e-6 for logits.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from eat.model.classifier import Classifier, ClassifierConfig
from eat.model.convert import convert_checkpoint
from eat.model.eat import EATModel

FIXTURES = Path(__file__).parent / "fixtures"
IMAGE = "modality_encoders.IMAGE."

# official name -> our EATModel name, for the parameters whose gradients the fixture records
GRAD_NAMES = {
    f"{IMAGE}extra_tokens": "student.extra_tokens",
    f"{IMAGE}context_encoder.norm.weight": "student.pre_norm.weight",
    f"{IMAGE}local_encoder.proj.bias": "student.patch_embed.bias",
    f"{IMAGE}decoder.proj.bias": "decoder.proj.bias",
    "blocks.0.norm1.bias": "student.blocks.0.norm1.bias",
    "blocks.2.mlp.fc2.bias": "student.blocks.2.mlp.fc2.bias",
}
EMA_NAMES = {
    f"{IMAGE}extra_tokens": "extra_tokens",
    f"{IMAGE}context_encoder.norm.weight": "pre_norm.weight",
    f"{IMAGE}local_encoder.proj.bias": "patch_embed.bias",
    "blocks.0.norm1.weight": "blocks.0.norm1.weight",
    "blocks.2.mlp.fc2.bias": "blocks.2.mlp.fc2.bias",
    f"{IMAGE}fixed_positional_encoder.positions": "pos_embed",
}


def official_model_cfg(c: dict) -> dict:
    """The resolved fairseq ``cfg["model"]`` of the fixture's tiny pretraining model."""
    image = {
        "patch_size": c["patch_size"], "in_chans": c["in_chans"], "embed_dim": c["embed_dim"],
        "target_length": c["target_length"], "max_length": c["max_length"],
        "num_extra_tokens": c["num_extra_tokens"], "prenet_depth": c["prenet_depth"],
        "use_alibi_encoder": False, "fixed_positions": True, "inverse_mask": c["inverse_mask"],
        "mask_prob": c["mask_prob"], "mask_prob_adjust": c["mask_prob_adjust"], "mask_length": c["mask_length"],
        "mask_noise_std": c["mask_noise_std"], "transformer_decoder": False,
        "decoder": {"decoder_dim": c["decoder_dim"], "decoder_groups": c["decoder_groups"],
                    "decoder_kernel": c["decoder_kernel"], "decoder_layers": c["decoder_layers"], "input_dropout": 0.0},
    }
    keys = (
        "embed_dim depth num_heads mlp_ratio norm_eps layer_norm_first average_top_k_layers clone_batch "
        "instance_norm_target_layer layer_norm_target_layer batch_norm_target_layer layer_norm_targets "
        "instance_norm_targets end_of_block_targets cls_loss d2v_loss recon_loss loss_beta ema_decay "
        "ema_end_decay ema_anneal_end_step"
    ).split()
    return {"_name": "data2vec_multi", "loss_scale": None, "modalities": {"image": image}, **{k: c[k] for k in keys}}


def official_checkpoint(kind: str = "pretrain") -> dict:
    """A fairseq-style checkpoint dict (``cfg`` + ``model``) holding the fixture's official weights."""
    if kind == "pretrain":
        fx = torch.load(FIXTURES / "eat_tiny_parity.pt", weights_only=True)
        sd = fx["state_dict"]
        model = {k: v for k, v in sd.items() if not k.startswith("_ema.")}
        model["_ema"] = {k[len("_ema.") :]: v for k, v in sd.items() if k.startswith("_ema.")}
        return {"cfg": {"model": official_model_cfg(fx["config"])}, "model": model}
    fx = torch.load(FIXTURES / "eat_tiny_finetune_parity.pt", weights_only=True)
    pre = torch.load(FIXTURES / "eat_tiny_parity.pt", weights_only=True)["config"]
    model_cfg = {
        "_name": "mae_image_classification", "num_classes": 10, "prediction_mode": "CLS_TOKEN",
        "use_fc_norm": True, "pretrained_model_args": {"model": official_model_cfg(pre)},
    }
    return {"cfg": {"model": model_cfg}, "model": dict(fx["state_dict"])}


@pytest.fixture(scope="module")
def fx():
    return torch.load(FIXTURES / "eat_tiny_parity.pt", weights_only=True)


def build_model() -> EATModel:
    conv = convert_checkpoint(official_checkpoint("pretrain"))
    assert conv.eat_cfg is not None, conv.notes
    model = EATModel(conv.eat_cfg)
    model.load_state_dict(conv.eat_state_dict())
    return model


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def test_eval_features(fx):
    model = build_model().eval()
    with torch.no_grad():
        features = model.student(fx["source"])
    assert features.shape == fx["features"].shape == (2, 129, 96)
    assert max_diff(features, fx["features"]) < 1e-5


def _training_forward(fx, model: EATModel, noise: torch.Tensor):
    captured = {}
    hooks = [
        model.student.blocks[-1].register_forward_hook(lambda m, i, o: captured.__setitem__("student", o[0])),
        model.decoder.register_forward_hook(lambda m, i, o: captured.__setitem__("pred", o)),
    ]
    model.train()
    out = model(fx["source"], fx["precomputed_mask"].bool(), noise=noise)
    for h in hooks:
        h.remove()
    return out, captured


def test_training_forward_targets_losses_and_grads(fx):
    model = build_model()
    out, cap = _training_forward(fx, model, fx["mask_noise_masked"])
    n = fx["sample_size"]
    assert out["sample_size"].item() == n == 824

    # student output: official tokens are in argsort order; ours ascending
    pos = fx["student_token_positions"]
    order = pos.argsort(dim=1)
    official = torch.cat([fx["student_x"][:, :1], fx["student_x"][:, 1:].gather(1, order[..., None].expand(-1, -1, 96))], 1)
    assert cap["student"].shape == (8, 26, 96)
    assert max_diff(cap["student"], official) < 1e-5

    y = model.targets(fx["source"])
    assert max_diff(y, fx["y"]) < 1e-5
    assert max_diff(y.mean(1), fx["cls_target"]) < 1e-5
    assert max_diff(cap["pred"].reshape(-1, 96), fx["pred_masked"]) < 1e-5

    cls_err = (cap["student"][:, 0] - y.mean(1).repeat_interleave(4, 0)).square() / 96**0.5 * n
    assert torch.allclose(cls_err, fx["loss_cls_tensor"], rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(out["frame_loss"] * n, fx["frame_loss_sum"], rtol=1e-5, atol=0)
    torch.testing.assert_close(out["utterance_loss"] * n, fx["cls_loss_sum"], rtol=1e-5, atol=0)
    torch.testing.assert_close(out["loss"], fx["loss"], rtol=1e-5, atol=0)
    torch.testing.assert_close(out["pred_var"], fx["pred_var"], rtol=1e-5, atol=0)
    torch.testing.assert_close(out["target_var"], fx["target_var"], rtol=1e-5, atol=0)

    out["loss"].backward()
    params = dict(model.named_parameters())
    for official_name, grad in fx["grads"].items():
        ours = params[GRAD_NAMES[official_name]].grad
        assert max_diff(ours, grad) < 1e-5, official_name
    assert all(p.grad is None for p in model.teacher.parameters())


def test_zero_noise_variant(fx):
    model = build_model()
    out, _ = _training_forward(fx, model, torch.zeros_like(fx["mask_noise_masked"]))
    ref = fx["zero_noise"]
    n = fx["sample_size"]
    torch.testing.assert_close(out["frame_loss"] * n, ref["frame_loss_sum"], rtol=1e-5, atol=0)
    torch.testing.assert_close(out["utterance_loss"] * n, ref["cls_loss_sum"], rtol=1e-5, atol=0)
    torch.testing.assert_close(out["loss"], ref["loss"], rtol=1e-5, atol=0)


def test_ema_step(fx):
    model = build_model()
    step = fx["ema_step"]
    decay = model.ema_decay_at(step["num_updates"])
    assert abs(decay - step["decay"]) < 1e-15
    model.after_optimizer_step(step["num_updates"])
    teacher = model.teacher.state_dict()
    for official_name, value in step["after"].items():
        assert max_diff(teacher[EMA_NAMES[official_name]], value) <= 1e-7, official_name


def test_finetuned_logits():
    ft = torch.load(FIXTURES / "eat_tiny_finetune_parity.pt", weights_only=True)
    conv = convert_checkpoint(official_checkpoint("finetune"))
    assert conv.prediction_mode == "cls" and conv.head_norm_eps == 1e-6 and conv.num_classes == 10
    clf = Classifier(
        ClassifierConfig(encoder=conv.encoder_cfg, num_classes=10, prediction_mode="cls", head_norm_eps=1e-6)
    )
    clf.load_state_dict(conv.classifier_state_dict())
    clf.eval()
    with torch.no_grad():
        logits = clf(ft["source"])
        cls_feature = clf.encoder(ft["source"])[:, 0]
    assert max_diff(cls_feature, ft["cls_feature"]) < 1e-5
    assert max_diff(logits, ft["logits"]) < 1e-6
