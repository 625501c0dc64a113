"""PaSST patchout: kept counts and structure, positions kept, nothing dropped in eval, FLOPs fall."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from eat.model.classifier import Classifier, ClassifierConfig, PatchoutConfig, patchout_ids, take_tokens
from eat.model.vit import EncoderConfig

T_FRAMES, MELS = 160, 64  # stride 8 -> grid (19, 7)


def model_with(patchout: PatchoutConfig, pos_embed: str = "sincos") -> Classifier:
    enc = EncoderConfig(
        embed_dim=32, depth=2, num_heads=4, patch_stride=(8, 8), target_length=T_FRAMES, num_mel_bins=MELS,
        pos_embed=pos_embed, max_time_patches=19, num_extra_tokens=2, extra_token_pos=True,
    )
    return Classifier(ClassifierConfig(encoder=enc, num_classes=4, prediction_mode="cls_dist", patchout=patchout))


def run_recording(model: Classifier, x: torch.Tensor) -> torch.Tensor:
    """Forward ``x`` and return the patch tokens that entered the transformer blocks."""
    seen = []
    inner = model.encoder.forward_tokens

    def record(tokens, padding_mask=None, return_ffn=False):
        seen.append(tokens.detach().clone())
        return inner(tokens, padding_mask, return_ffn)

    model.encoder.forward_tokens = record
    model(x)
    model.encoder.forward_tokens = inner
    return seen[0]


def positions_of(kept: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """For each kept token (B, K, D), the index of the identical token in ``full`` (B, N, D)."""
    match = (kept[:, :, None, :] == full[:, None, :, :]).all(-1)  # (B, K, N)
    assert torch.all(match.sum(-1) == 1), "a kept token is not an unchanged embedded token"
    return match.float().argmax(-1)


@pytest.mark.parametrize("s_t,s_f,u,expect", [(5, 2, 0, 14 * 5), (0, 0, 40, 133 - 40), (5, 2, 10, 60),
                                              (100, 100, 0, 1), (0, 0, 500, 1)])
def test_kept_counts_and_structure(s_t, s_f, u, expect):
    grid = (19, 7)
    ids = patchout_ids(grid, PatchoutConfig(s_t=s_t, s_f=s_f, u=u), batch=3)
    assert ids.shape == (1, expect)
    assert torch.all(ids[:, 1:] > ids[:, :-1]) and ids.min() >= 0 and ids.max() < 133
    if u == 0:  # structured only: a product of kept time columns and kept frequency rows
        t, f = ids[0] // 7, ids[0] % 7
        assert t.unique().numel() * f.unique().numel() == expect
        assert t.unique().numel() == max(19 - s_t, 1) and f.unique().numel() == max(7 - s_f, 1)


def test_per_example_ids_differ_and_shared_ids_do_not():
    cfg = PatchoutConfig(s_t=6, s_f=3, u=5, per_example=True)
    torch.manual_seed(0)
    ids = patchout_ids((19, 7), cfg, batch=8)
    assert ids.shape == (8, 13 * 4 - 5)
    assert len({tuple(r.tolist()) for r in ids}) == 8
    x = torch.randn(8, 133, 3)
    ref = torch.stack([x[b, ids[b]] for b in range(8)])
    assert torch.equal(take_tokens(x, ids), ref)


@pytest.mark.parametrize("per_example", [False, True])
@pytest.mark.parametrize("pos_embed", ["sincos", "learned_separate"])
def test_kept_tokens_carry_their_own_positions(per_example, pos_embed):
    torch.manual_seed(1)
    model = model_with(PatchoutConfig(s_t=6, s_f=3, u=4, per_example=per_example), pos_embed).train()
    x = torch.randn(4, T_FRAMES, MELS)
    kept = run_recording(model, x)
    assert kept.shape == (4, 13 * 4 - 4, 32)
    full = model.encoder.embed(x, time_offset=0)  # the table covers the input exactly: window 0 only
    pos = positions_of(kept, full)
    assert torch.all(pos[:, 1:] > pos[:, :-1])  # ascending grid order
    distinct = {tuple(r.tolist()) for r in pos}
    assert len(distinct) == (4 if per_example else 1)


def test_nothing_dropped_in_eval():
    model = model_with(PatchoutConfig(s_t=6, s_f=3, u=4)).eval()
    x = torch.randn(2, T_FRAMES, MELS)
    kept = run_recording(model, x)
    torch.testing.assert_close(kept, model.encoder.embed(x), rtol=0, atol=0)


def train_step_flops(model: Classifier, x: torch.Tensor) -> int:
    model.train()
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    return counter.get_total_flops()


def test_training_flops_fall_with_the_kept_fraction():
    torch.manual_seed(2)
    x = torch.randn(4, T_FRAMES, MELS)
    full = train_step_flops(model_with(PatchoutConfig()), x)
    cfg = PatchoutConfig(s_t=9, s_f=3)
    kept = (19 - 9) * (7 - 3)  # 40 of 133 patches
    dropped = train_step_flops(model_with(cfg), x)
    # The patch conv runs on the full grid either way; every linear layer scales with the sequence
    # length (+2 extra tokens) and attention even faster, so the rest falls at least proportionally.
    conv_model = model_with(PatchoutConfig())
    with FlopCounterMode(display=False) as c:
        conv_model.encoder.patch_embed(x.unsqueeze(1)).sum().backward()
    conv = c.get_total_flops()
    frac = (kept + 2) / (133 + 2)
    assert dropped - conv <= frac * (full - conv) * 1.001
    assert dropped < 0.5 * full
