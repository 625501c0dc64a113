"""Augmentations: mixup label math, SpecAugment spans, roll/gain/noise properties, determinism."""

import math

import pytest
import scipy.stats
import torch

from eat.audio.augment import (
    AugmentConfig,
    augment_batch,
    augment_waveform,
    beta,
    mixup,
    random_gain,
    random_roll,
    roll_rows,
    spc2_noise,
    spec_augment,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def one_hot(labels: list[int], c: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(labels), c).float()


def test_mixup_targets_are_the_same_convex_combination():
    x = torch.randn(6, 20, 8)
    y = one_hot([0, 1, 2, 3, 4, 0], 5)
    xm, ym, lam = mixup(x, y, alpha=0.8, prob=1.0, generator=gen(1))
    assert lam.shape == (6,) and torch.all(lam == lam[0]) and 0 <= lam[0] <= 1
    l3 = lam.view(6, 1, 1)
    torch.testing.assert_close(xm, l3 * x + (1 - l3) * x.flip(0), rtol=0, atol=0)
    torch.testing.assert_close(ym, lam[:, None] * y + (1 - lam[:, None]) * y.flip(0), rtol=0, atol=0)
    torch.testing.assert_close(ym.sum(1), torch.ones(6))


def test_mixup_per_example_and_dominant():
    x, y = torch.randn(64, 10), one_hot(list(range(8)) * 8, 8)
    _, _, lam = mixup(x, y, alpha=0.3, prob=1.0, generator=gen(2), per_example=True, dominant=True)
    assert lam.unique().numel() > 10 and torch.all(lam >= 0.5) and torch.all(lam <= 1)
    _, _, lam = mixup(x, y, alpha=0.3, prob=0.5, generator=gen(3), per_example=True)
    assert 10 < (lam == 1).sum() < 54  # about half the rows skipped


def test_mixup_prob_zero_is_identity_and_seeded():
    x, y = torch.randn(4, 3), one_hot([0, 1, 2, 0], 3)
    xm, ym, lam = mixup(x, y, alpha=1.0, prob=0.0, generator=gen(0))
    assert torch.equal(xm, x) and torch.equal(ym, y) and torch.all(lam == 1)
    a = mixup(x, y, 1.0, 1.0, gen(5))[0]
    b = mixup(x, y, 1.0, 1.0, gen(5))[0]
    c = mixup(x, y, 1.0, 1.0, gen(6))[0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError):
        mixup(x, torch.tensor([0, 1, 2, 0]), 1.0)


def spans(zero: torch.Tensor) -> list[int]:
    """Indices of a 1-D bool tensor, checked to be one contiguous run."""
    idx = zero.nonzero().flatten().tolist()
    if idx:
        assert idx == list(range(idx[0], idx[-1] + 1))
    return idx


@pytest.mark.parametrize("freq_mask,time_mask", [(25.6, 40.0), (48, 96), (51.2, 0.0)])
def test_spec_augment_spans_within_bounds(freq_mask, time_mask):
    b, t, f = 32, 128, 64
    x = torch.rand(b, t, f) + 1.0
    out = spec_augment(x, freq_mask, time_mask, gen(7))
    zero = out == 0
    freq_sets, time_sets = [], []
    for i in range(b):
        fz = spans(zero[i].all(0))
        tz = spans(zero[i].all(1))
        assert len(fz) <= math.ceil(min(freq_mask, f)) and len(tz) <= math.ceil(min(time_mask, t))
        # every zero lies in the frequency or the time span, every other value is untouched
        expect = torch.zeros(t, f, dtype=torch.bool)
        expect[:, fz] = True
        expect[tz, :] = True
        assert torch.equal(zero[i], expect)
        assert torch.equal(out[i][~expect], x[i][~expect])
        freq_sets.append(tuple(fz))
        time_sets.append(tuple(tz))
    assert len(set(freq_sets)) > b // 2  # masks are drawn per example
    if time_mask:
        assert len(set(time_sets)) > b // 2
    assert max(len(s) for s in freq_sets) > freq_mask / 2  # widths really spread over the range


def test_spec_augment_channel_axis_and_seed():
    x = torch.rand(4, 1, 50, 16) + 1
    a = spec_augment(x, 8, 20, gen(3))
    assert a.shape == x.shape
    assert torch.equal(a[:, 0], spec_augment(x[:, 0], 8, 20, gen(3)))
    assert not torch.equal(a, spec_augment(x, 8, 20, gen(4)))


def test_roll_preserves_samples_and_matches_torch_roll():
    wave = torch.randn(5, 1000)
    out = random_roll(wave, gen(11))
    for row_in, row_out in zip(wave, out, strict=True):
        assert torch.equal(row_in.sort().values, row_out.sort().values)
        shift = [s for s in range(1000) if torch.equal(torch.roll(row_in, s), row_out)]
        assert len(shift) == 1
    shifts = torch.tensor([0, 3, -2, 7])
    x = torch.randn(4, 6, 3)
    ref = torch.stack([torch.roll(x[i], int(shifts[i]), dims=0) for i in range(4)])
    assert torch.equal(roll_rows(x, shifts, dim=1), ref)
    assert torch.equal(random_roll(wave[0], gen(1)).sort().values, wave[0].sort().values)


def test_gain_modes():
    wave = torch.randn(400, 50)
    g = random_gain(wave, "beta", gen(0)) / wave
    factor = g[:, 0]
    torch.testing.assert_close(g, factor[:, None].expand_as(g))
    assert factor.min() > 0.5 and factor.max() < 1.5 and abs(factor.mean().item() - 1) < 0.02
    factor = (random_gain(wave, "db", gen(0), max_db=7) / wave)[:, 0]
    db = 20 * torch.log10(factor)
    torch.testing.assert_close(db, db.round(), atol=1e-4, rtol=0)
    assert set(db.round().int().tolist()) == set(range(-7, 7))


def test_spc2_noise_adds_small_positive_noise_then_rolls_time():
    b, t, f = 64, 40, 4
    x = (100.0 * torch.arange(t)).view(1, t, 1).expand(b, t, f).contiguous()
    out = spc2_noise(x, gen(9))
    frame = (out / 100).floor()  # which input frame each output frame came from
    shift = (torch.arange(t) - frame[:, :, 0]).remainder(t)  # same shift for every frame of a row
    assert torch.all(shift == shift[:, :1])
    signed = torch.where(shift[:, 0] >= t // 2, shift[:, 0] - t, shift[:, 0])
    assert signed.min() >= -10 and signed.max() <= 9 and signed.unique().numel() > 5
    noise = out - 100 * frame
    assert noise.min() >= 0 and noise.max() < 0.1
    assert noise.amax((1, 2)).std() > 0.01  # per-example noise scale


def test_config_wrappers_are_deterministic():
    cfg = AugmentConfig(spec_mixup_prob=1.0, spec_mixup_alpha=0.8, freq_mask=8, time_mask=10, spc2_noise=True,
                        roll=True, gain="beta")
    x, y = torch.randn(4, 30, 16), one_hot([0, 1, 2, 3], 4)
    a = augment_batch(x, y, cfg, gen(1))
    b = augment_batch(x, y, cfg, gen(1))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    w = torch.randn(16000)
    assert torch.equal(augment_waveform(w, cfg, gen(2)), augment_waveform(w, cfg, gen(2)))
    assert not torch.equal(augment_waveform(w, cfg, gen(2)), w)


@pytest.mark.parametrize("alpha", [0.3, 0.8, 10.0])
def test_beta_draws_follow_the_beta_distribution(alpha):
    draws = beta(alpha, 5000, gen(int(alpha * 10)))
    assert draws.dtype == torch.float32 and draws.shape == (5000,)
    assert torch.all((draws >= 0) & (draws <= 1))
    assert scipy.stats.kstest(draws.double().numpy(), scipy.stats.beta(alpha, alpha).cdf).pvalue > 1e-3
    assert torch.equal(beta(alpha, 3, gen(1)), beta(alpha, 3, gen(1)))
    with pytest.raises(ValueError, match="alpha must be positive"):
        beta(0.0, 3, gen(1))


ALL_ON = AugmentConfig(spec_mixup_prob=0.9, spec_mixup_alpha=0.8, mixup_per_example=True, mixup_dominant=True,
                       freq_mask=8, time_mask=10, spc2_noise=True, roll=True, gain="db")
HOST_READS = ("item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__")


def test_augmentation_never_reads_a_tensor_back_to_the_host(monkeypatch):
    """On a GPU a value read back (``.item()``, ``bool(t)``, a copy to the CPU) makes the step wait for the
    device. Every such read raises here, and every augmentation still runs: the random numbers go from the
    generator to the data, never back."""
    x, y = torch.randn(6, 30, 16), one_hot([0, 1, 2, 3, 0, 1], 4)
    wave = torch.randn(6, 800)

    def refuse(*args, **kwargs):
        raise AssertionError("a tensor was read back to the host")

    for name in HOST_READS:
        monkeypatch.setattr(torch.Tensor, name, refuse)
    with pytest.raises(AssertionError, match="read back"):
        bool(x.sum() > 0)  # the patch is live
    for cfg in (ALL_ON, AugmentConfig(spec_mixup_prob=1.0, spec_mixup_alpha=0.8, gain="beta", roll=True)):
        augment_batch(x, y, cfg, gen(3))
        augment_waveform(wave, cfg, gen(4))
        augment_batch(x, y, cfg, None)  # the global RNG


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA synchronisation check")
def test_augmentation_on_cuda_does_not_synchronise():
    g = torch.Generator(device="cuda").manual_seed(0)
    x, y = torch.randn(6, 30, 16, device="cuda"), one_hot([0, 1, 2, 3, 0, 1], 4).cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        augment_batch(x, y, ALL_ON, g)
        augment_batch(x, y, ALL_ON, gen(1))  # a CPU generator: draws copied to the device without waiting
        augment_waveform(torch.randn(6, 800, device="cuda"), ALL_ON, g)
    finally:
        torch.cuda.set_sync_debug_mode("default")
