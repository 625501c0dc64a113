"""The CUDA dry run (eat.apps.gpu_dryrun): every training step runs on fake CUDA tensors in CI, without a GPU, and
fails on a CPU/CUDA mix, a host sync or a dtype error; three planted defects prove that it can fail."""

from __future__ import annotations

import importlib

import pytest
import torch
from torch._subclasses.fake_tensor import DataDependentOutputException

from eat.apps import gpu_dryrun as dryrun
from eat.apps.gpu_dryrun import (
    HEADS,
    RECIPES,
    extraction_step,
    finetune_step,
    pretrain_backward,
    pretrain_step,
)
from eat.audio.fbank import FrontendConfig, waveform_to_input
from eat.model import vit
from eat.model.decoder import CNNDecoder
from eat.model.eat import EATModel

fbank_module = importlib.import_module("eat.audio.fbank")  # eat.audio.fbank is also a function's name
BF16 = "bfloat16"
ON_GPU = "cuda:0"


def _on_gpu(outputs: dict[str, str]) -> None:
    assert outputs and all(ON_GPU in v for v in outputs.values()), outputs


@pytest.mark.parametrize("fbank_on_device", [True, False], ids=["gpu_fbank", "spectrogram"])
def test_pretrain_step_host_mask(fbank_on_device):
    r = pretrain_step("tiny", fbank_on_device=fbank_on_device)
    _on_gpu(r.outputs)  # loss, grad norm, skip flag: all stay on the device
    assert r.outputs["loss"].startswith("float32")
    assert r.linear_dtype == BF16  # bf16 autocast was active on the fake device
    assert r.optimizer == "fused" and r.grads > 0  # fused AdamW (found_inf on the device) and the EMA ran


def test_pretrain_step_base_preset():
    """The configuration the main user runs: EAT-base, 10 s clips (1024 frames), 16 clones, GPU fbank."""
    r = pretrain_step("base", batch_size=2, fbank_on_device=True)
    _on_gpu(r.outputs)
    assert r.linear_dtype == BF16


@pytest.mark.parametrize("device_mask", [False, True], ids=["loader_mix_rows", "device_mix_rows"])
def test_pretrain_step_mixture_pretraining(device_mask):
    """SSLAM stage 2: mixtures made on the device, the partner's teacher pass, the source retention loss."""
    r = pretrain_step("tiny", batch_size=2, device_mask=device_mask,
                      overrides={"mix": True, "retention_loss_weight": 1.0, "utterance_top_k_layers": 1})
    _on_gpu(r.outputs)
    assert "retention_loss" in r.outputs and r.linear_dtype == BF16


def test_pretrain_step_device_mask_and_accumulation():
    r = pretrain_step("tiny", device_mask=True, grad_accum=2)
    _on_gpu(r.outputs)
    assert r.linear_dtype == BF16


def test_pretrain_backward_on_fake_cpu():
    r = pretrain_backward("tiny")
    assert int(r["parameters_with_grad"]) > 0
    assert r["kinds"] == "decoder:float32, student:float32"  # the teacher gets none; grads in the params' dtype


@pytest.mark.parametrize("head", HEADS)
def test_finetune_step_every_head(head):
    r = finetune_step(head)  # waveform + spectrogram mixup, SpecAugment, patchout, fbank on the device
    _on_gpu(r.outputs)
    assert r.linear_dtype == BF16 and r.grads > 0


@pytest.mark.parametrize("recipe", [r for r in RECIPES if r != "eat"])
def test_finetune_step_other_recipes(recipe):
    _on_gpu(finetune_step("cls_dist" if recipe == "passt" else "cls", recipe=recipe).outputs)


def test_finetune_step_multilabel():
    _on_gpu(finetune_step("cls", multi_label=True).outputs)


def test_extraction_hear_and_probe_features():
    r = extraction_step(batch_size=3, layers=(0, -1), poolings=("mean", "meanstd", "band-mean", "band-meanstd"))
    _on_gpu(r)
    assert r["cls"] == "float32 cuda:0 (3, 96)"
    assert r["block2_band-meanstd"] == "float32 cuda:0 (3, 1536)"  # 2 x 8 bands x 96


def test_no_fake_tensor_outlives_the_region():
    pretrain_step("tiny")  # fills the fbank's device caches inside the region
    assert fbank_module._mel_blocks.cache_info().currsize == 0
    x = waveform_to_input(torch.randn(2, 16000), FrontendConfig(target_length=96))  # real tensors again
    assert torch.isfinite(x).all() and not dryrun.is_fake(x)
    assert torch.Generator is dryrun._REAL_GENERATOR


# ------------------------------------------------------------------------------------ planted defects


def test_planted_tensor_without_device_fails(monkeypatch):
    def drop_path(x, rate, training):  # the defect: the keep mask made without device= (x.new_empty is right)
        if rate == 0.0 or not training:
            return x
        return x * torch.empty(x.shape[0], 1, 1).bernoulli_(1 - rate).div_(1 - rate)

    monkeypatch.setattr(vit, "drop_path", drop_path)
    with pytest.raises(RuntimeError, match="two different devices|at least two devices"):
        finetune_step("cls")  # fine-tuning uses drop path 0.1


def test_planted_item_in_step_fails(monkeypatch):
    forward = EATModel.forward

    def logged_forward(self, *args, **kwargs):  # the defect: reading the loss on the host every step
        out = forward(self, *args, **kwargs)
        print(f"loss {out['loss'].item():.4f}")
        return out

    monkeypatch.setattr(EATModel, "forward", logged_forward)
    with pytest.raises(DataDependentOutputException):
        pretrain_step("tiny")


def test_planted_fp32_buffer_into_bf16_fails(monkeypatch):
    forward = CNNDecoder.forward

    def forward_with_fp32_projection(self, x, grid, positions=None):
        out = forward(self, x, grid, positions)  # bf16 under autocast
        weight = torch.eye(out.shape[-1], device=out.device)  # the defect: an fp32 buffer ...
        with torch.autocast(out.device.type, enabled=False):  # ... in an fp32 region that forgets to cast
            return out @ weight

    monkeypatch.setattr(CNNDecoder, "forward", forward_with_fp32_projection)
    with pytest.raises(RuntimeError, match="same dtype"):
        pretrain_step("tiny")


def test_planted_copy_to_host_fails(monkeypatch):
    forward = EATModel.forward

    def forward_keeping_a_host_copy(self, *args, **kwargs):  # the defect: .cpu() waits for the GPU
        out = forward(self, *args, **kwargs)
        self.last_loss = out["loss"].detach().cpu()
        return out

    monkeypatch.setattr(EATModel, "forward", forward_keeping_a_host_copy)
    with pytest.raises(RuntimeError, match="waits for the GPU"):
        pretrain_step("tiny")


def test_planted_boolean_test_of_a_device_tensor_fails(monkeypatch):
    from eat.audio import augment

    spec_augment = augment.spec_augment

    def checked(x, freq_mask, time_mask, generator=None):  # the defect: a Python `if` on device values
        out = spec_augment(x, freq_mask, time_mask, generator)
        if (out == 0).all():
            raise ValueError("everything masked")
        return out

    monkeypatch.setattr(augment, "spec_augment", checked)
    with pytest.raises(DataDependentOutputException):
        finetune_step("mean")


def test_the_fbank_sync_it_found_stays_found(monkeypatch):
    """The first GPU fbank call used to read its mel matrix on the host (``nonzero().tolist()``) to find each
    filter group's FFT bins; the dry run stopped there. Putting that back makes it fail again."""

    def rows_from_the_matrix(num_mel_bins, n_fft, sample_rate, low_freq, high_freq, b0, b1):
        dense = fbank_module.mel_banks(num_mel_bins, n_fft, sample_rate, low_freq, high_freq, "cuda")
        used = dense[:, b0:b1].ne(0).any(dim=1).nonzero().flatten().tolist()
        return (used[0], used[-1] + 1) if used else (0, 0)

    monkeypatch.setattr(fbank_module, "_mel_rows", rows_from_the_matrix)
    with pytest.raises(Exception, match="nonzero|DynamicOutputShape|_local_scalar_dense"):
        pretrain_step("tiny", fbank_on_device=True)


@pytest.mark.parametrize("bins,n_fft,rate,low,high", [(128, 512, 16000.0, 20.0, 0.0), (80, 1024, 32000.0, 50.0, -200.0),
                                                      (23, 256, 8000.0, 0.0, 3000.0)])
def test_mel_rows_cover_every_weight(bins, n_fft, rate, low, high):
    """The host-side FFT-bin range of each filter group (plain arithmetic, no look at the matrix) contains every
    non-zero weight of the group, so the blocked product equals the dense one."""
    dense = fbank_module.mel_banks(bins, n_fft, rate, low, high)
    for b0 in range(0, bins, fbank_module._MEL_GROUP):
        b1 = min(b0 + fbank_module._MEL_GROUP, bins)
        k0, k1 = fbank_module._mel_rows(bins, n_fft, rate, low, high, b0, b1)
        used = dense[:, b0:b1].ne(0).any(dim=1).nonzero().flatten()
        assert used.numel() and k0 <= int(used[0]) and int(used[-1]) < k1
        assert k1 - k0 <= used.numel() + 4  # a spare bin on each side, plus edge bins whose weight rounds to 0
