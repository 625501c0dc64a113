"""FeatureExtractor: padding never leaks across a batch, long audio is windowed and merged as documented,
layers are block outputs, frame/patch bookkeeping and timestamps are right, and every input path agrees."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import procs
import pytest
import torch

from eat.audio.fbank import FrontendConfig, waveform_to_input
from eat.audio.io import resample
from eat.features import FeatureExtractor
from eat.model.eat import eat_config
from eat.model.vit import Encoder

SR = 16000


def tiny_extractor(seed: int = 0, target_length: int = 256) -> FeatureExtractor:
    torch.manual_seed(seed)
    enc = Encoder(eat_config("tiny").encoder)
    return FeatureExtractor(enc, FrontendConfig(target_length=target_length))


def waves(seconds: list[float], seed: int = 1) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [0.1 * torch.randn(int(s * SR), generator=gen) for s in seconds]


def padded_fbank(fx: FeatureExtractor, wave: torch.Tensor) -> torch.Tensor:
    """Reference front-end: the whole clip's fbank padded (pad value) to a whole number of columns."""
    frames = (wave.shape[0] - 400) // 160 + 1
    fb = waveform_to_input(wave, FrontendConfig(target_length=frames))
    cols = math.ceil(frames / 16)
    return torch.cat([fb, torch.full((cols * 16 - frames, 128), fx.pad_value)])


@pytest.mark.parametrize("granularity", ["utterance", "frame", "patch"])
def test_batch_of_different_lengths_equals_each_clip_alone(granularity):
    fx = tiny_extractor()
    clips = waves([0.9, 2.5, 1.3, 2.03])  # all fit in one 256-frame window, so the batch needs a padding mask
    batch = fx.extract_features(clips, granularity=granularity, utterance="mean", layers=[1, -1])
    if granularity != "utterance":
        assert bool(batch.mask.any())
    for i, clip in enumerate(clips):
        alone = fx.extract_features([clip], granularity=granularity, utterance="mean", layers=[1, -1])
        got = batch.embeddings[i : i + 1]
        if granularity != "utterance":
            n = alone.embeddings.shape[2]
            assert not bool(batch.mask[i, :n].any()) and bool(batch.mask[i, n:].all())
            got = got[:, :, :n]
        torch.testing.assert_close(got, alone.embeddings, atol=1e-5, rtol=0)


def test_padded_wave_batch_with_lengths_equals_list_input():
    fx = tiny_extractor()
    clips = waves([1.0, 2.2])
    padded = torch.nn.utils.rnn.pad_sequence(clips, batch_first=True)
    a = fx.extract_features(clips, granularity="frame")
    b = fx.extract_features(padded, lengths=[len(c) for c in clips], granularity="frame")
    torch.testing.assert_close(a.embeddings, b.embeddings, atol=1e-6, rtol=0)


def test_short_clip_is_the_encoder_on_its_padded_fbank():
    fx = tiny_extractor()
    (clip,) = waves([1.7])
    fb = padded_fbank(fx, clip)
    tokens = fx(fb[None])
    out = fx.extract_features([clip], granularity="patch")
    torch.testing.assert_close(out.embeddings[0], tokens[0, 1:], atol=1e-6, rtol=0)
    cls = fx.extract_features([clip], granularity="utterance").embeddings
    torch.testing.assert_close(cls[0], tokens[0, 0], atol=1e-6, rtol=0)
    mean = fx.extract_features([clip], granularity="utterance", utterance="mean").embeddings
    torch.testing.assert_close(mean[0], tokens[0, 1:].mean(0), atol=1e-6, rtol=0)
    frame = fx.extract_features([clip], granularity="frame").embeddings
    torch.testing.assert_close(frame[0], tokens[0, 1:].reshape(-1, 8, 96).mean(1), atol=1e-6, rtol=0)


def test_pad_to_window_reproduces_the_official_full_length_input():
    fx = tiny_extractor()
    (clip,) = waves([1.0])
    fb = padded_fbank(fx, clip)
    full = torch.cat([fb, torch.full((256 - fb.shape[0], 128), fx.pad_value)])
    tokens = fx(full[None])
    out = fx.extract_features([clip], granularity="patch", pad_to_window=True)
    torch.testing.assert_close(out.embeddings[0], tokens[0, 1 : 1 + fb.shape[0] // 16 * 8], atol=1e-6, rtol=0)
    assert not torch.allclose(out.embeddings, fx.extract_features([clip], granularity="patch").embeddings)


def test_long_audio_windows_are_merged_as_documented():
    fx = tiny_extractor()
    (clip,) = waves([7.3])  # 728 frames -> 46 columns; windows of 16 columns, hop 8
    fb = padded_fbank(fx, clip)
    cols = fb.shape[0] // 16
    starts = list(range(0, cols - 16 + 1, 8))
    starts += [cols - 16] if starts[-1] + 16 < cols else []
    acc, hits, cls = torch.zeros(cols, 8, 96), torch.zeros(cols), []
    for s in starts:  # plain loop reference
        tok = fx(fb[None, s * 16 : s * 16 + 256])[0]
        acc[s : s + 16] += tok[1:].reshape(16, 8, 96)
        hits[s : s + 16] += 1
        cls.append(tok[0])
    patches = acc / hits[:, None, None]
    out = fx.extract_features([clip], granularity="patch", batch_size=2)
    torch.testing.assert_close(out.embeddings[0], patches.reshape(-1, 96), atol=1e-5, rtol=0)
    utt = fx.extract_features([clip]).embeddings[0]
    torch.testing.assert_close(utt, torch.stack(cls).mean(0), atol=1e-5, rtol=0)
    frame = fx.extract_features([clip], granularity="frame", overlap=0.5).embeddings[0]
    torch.testing.assert_close(frame, patches.mean(1), atol=1e-5, rtol=0)
    assert starts == [0, 8, 16, 24, 30]


def test_layers_are_block_outputs():
    fx = tiny_extractor()
    enc = fx.encoder
    fb = torch.randn(2, 64, 128)
    x = enc.embed(fb)
    x = enc.pre_norm(torch.cat([enc.extra_tokens.expand(2, -1, -1), x], 1))
    ref = []
    for block in enc.blocks:  # reference: the blocks run by hand
        x, _ = block(x)
        ref.append(x)
    out = fx.extract_features(fb, is_fbank=True, granularity="patch", layers=[0, 1, 2, -1])
    for i, r in enumerate(ref + ref[-1:]):
        torch.testing.assert_close(out.embeddings[:, i], r[:, 1:], atol=1e-6, rtol=0)
    single = fx.extract_features(fb, is_fbank=True, granularity="patch", layers=1)
    assert single.embeddings.shape == (2, 32, 96) and single.layers == [1]
    with pytest.raises(ValueError, match="layer 3 out of range"):
        fx.extract_features(fb, layers=3)


def test_patch_index_timestamps_and_mask():
    fx = tiny_extractor()
    clips = waves([1.0, 0.5])
    out = fx.extract_features(clips, granularity="patch")
    cols = out.num_columns.tolist()
    assert cols == [math.ceil(98 / 16), math.ceil(48 / 16)] == [7, 3]
    t, f = out.patch_index.T
    assert torch.equal(t, torch.arange(7).repeat_interleave(8)) and torch.equal(f, torch.arange(8).repeat(7))
    # column t spans frames 16t..16t+15, i.e. samples 2560t .. 2560t + 15*160 + 400
    expected = (torch.arange(7, dtype=torch.float64) * 2560 + (15 * 160 + 400) / 2) / SR
    frame = fx.extract_features(clips, granularity="frame")
    torch.testing.assert_close(frame.timestamps[0], expected)
    assert frame.timestamps[0, 1] - frame.timestamps[0, 0] == pytest.approx(0.16)
    assert frame.mask.tolist()[1] == [False] * 3 + [True] * 4
    assert torch.equal(out.timestamps[0], expected.repeat_interleave(8))


def test_other_sample_rates_are_resampled_first():
    fx = tiny_extractor()
    (clip,) = waves([1.2])
    at_32k = resample(clip, SR, 32000)
    a = fx.extract_features([at_32k], sample_rate=32000, granularity="frame").embeddings
    b = fx.extract_features([resample(at_32k, 32000, SR)], granularity="frame").embeddings
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    other = resample(waves([0.6], seed=2)[0], SR, 32000)
    both = fx.extract_features([other, at_32k], sample_rate=32000, granularity="frame").embeddings
    torch.testing.assert_close(both[1:], a, atol=1e-5, rtol=0)  # the batch is resampled padded, at once


def test_fbank_input_paths_agree_with_waveforms():
    fx = tiny_extractor()
    clips = waves([1.0, 0.6])
    fbs = [fx.fbank([c])[0][0] for c in clips]
    from_waves = fx.extract_features(clips, granularity="frame")
    from_list = fx.extract_features(fbs, granularity="frame")  # list of (T, F): detected as fbanks
    padded = torch.nn.utils.rnn.pad_sequence(fbs, batch_first=True)
    from_padded = fx.extract_features(padded[:, None], lengths=[f.shape[0] for f in fbs], granularity="frame")
    torch.testing.assert_close(from_list.embeddings, from_waves.embeddings, atol=1e-6, rtol=0)
    torch.testing.assert_close(from_padded.embeddings, from_waves.embeddings, atol=1e-6, rtol=0)
    numpy_in = fx.extract_features([c.numpy() for c in clips], granularity="frame")
    torch.testing.assert_close(numpy_in.embeddings, from_waves.embeddings, atol=0, rtol=0)


def test_bad_arguments_raise_clear_errors():
    fx = tiny_extractor()
    (clip,) = waves([1.0])
    with pytest.raises(ValueError, match="granularity"):
        fx.extract_features([clip], granularity="token")
    with pytest.raises(ValueError, match="fewer than one"):
        fx.extract_features([torch.zeros(100)])
    with pytest.raises(ValueError, match="fbanks"):
        fx.extract_features(torch.zeros(1, 64, 80))
    with pytest.raises(ValueError, match="overlap"):
        fx.extract_features([clip], overlap=1.0)
    assert fx.pad_value == pytest.approx(4.268 / 9.138)


# ---------------------------------------------------------------------------------------------- tools/extract_features.py


def extract_tool(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    """tools/extract_features.py as a user runs it; ``ok``: it must succeed, else fail with an ``error:`` line."""
    tool = Path(__file__).resolve().parents[1] / "tools" / "extract_features.py"
    proc = procs.run([sys.executable, str(tool), *args], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if ok:
        assert proc.returncode == 0, proc.stderr[-3000:]
    else:
        assert proc.returncode != 0 and proc.stderr.strip().splitlines()[-1].startswith("error: "), proc.stderr
    return proc


@pytest.fixture
def corpus(tmp_path):
    import soundfile

    from eat.export import save_export

    fx = tiny_extractor()
    save_export(tmp_path / "enc", fx.encoder.cfg, fx.encoder.state_dict(), fx.frontend)
    (tmp_path / "audio").mkdir()
    clips = waves([0.7, 1.9, 1.1, 3.0, 0.5])
    lines = []
    for i, c in enumerate(clips):
        soundfile.write(tmp_path / "audio" / f"{i}.wav", c.numpy(), SR, subtype="FLOAT")
        lines.append(f"audio/{i}.wav\t{len(c)}")
    (tmp_path / "audio" / "bad.wav").write_bytes(b"not audio")
    lines.insert(2, "audio/bad.wav\t16000")
    soundfile.write(tmp_path / "audio" / "tiny.wav", np.zeros(160, np.float32), SR)  # shorter than one frame
    lines.append("audio/tiny.wav\t160")
    (tmp_path / "train.tsv").write_text(f"{tmp_path}\n" + "\n".join(lines) + "\n")
    return tmp_path, fx, clips


def test_extract_features_tool_shards_index_and_resume(corpus):
    from safetensors.torch import load_file

    root, fx, clips = corpus
    args = ["--encoder", str(root / "enc"), "--manifest", str(root / "train.tsv"), "--out", str(root / "feats"),
            "--granularity", "frame", "--shard-size", "2", "--batch-size", "2", "--device", "cpu"]
    extract_tool(*args)
    index = json.loads((root / "feats" / "index.json").read_text())
    assert index["num_embedded"] == 5 and index["num_bad"] == 2
    assert [b[0] for b in index["bad"]] == ["audio/bad.wav", "audio/tiny.wav"] and "one" in index["bad"][1][1]
    assert index["shards"] == [f"shard_0000{k}.safetensors" for k in range(4)]
    for i, clip in enumerate(clips):
        shard, row = index["clips"][f"audio/{i}.wav"]
        data = load_file(root / "feats" / index["shards"][shard])
        lo, hi = data["offsets"][row], data["offsets"][row + 1]
        ref = fx.extract_features([clip], granularity="frame")
        torch.testing.assert_close(data["embeddings"][lo:hi], ref.embeddings[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(data["timestamps"][lo:hi], ref.timestamps[0])

    # resume: a missing shard is redone, finished ones are left alone
    stamp = (root / "feats" / "shard_00000.safetensors").stat().st_mtime_ns
    (root / "feats" / "shard_00001.json").unlink()
    extract_tool(*args)
    assert (root / "feats" / "shard_00000.safetensors").stat().st_mtime_ns == stamp
    assert json.loads((root / "feats" / "index.json").read_text())["clips"] == index["clips"]
    assert "other settings" in extract_tool(*args[:-4], "--granularity", "utterance", "--device", "cpu",
                                            ok=False).stderr


def test_extract_features_tool_default_is_the_registrys_embedding(corpus):
    """No --layers/--pooling: every block, band mean+std, concatenated (FeatureExtractor.clip_embeddings)."""
    from safetensors.torch import load_file

    root, fx, clips = corpus
    extract_tool("--encoder", str(root / "enc"), "--manifest", str(root / "train.tsv"), "--out", str(root / "d"),
                 "--device", "cpu")
    index = json.loads((root / "d" / "index.json").read_text())
    assert (index["pooling"], index["layers"]) == ("band-meanstd", ["all"])
    emb = load_file(root / "d" / index["shards"][0])["embeddings"]
    assert emb.shape == (5, fx.clip_embedding_dim()) == (5, 3 * 2 * 8 * 96)
    shard, row = index["clips"]["audio/3.wav"]
    torch.testing.assert_close(emb[row], fx.clip_embeddings([clips[3]])[0], atol=1e-5, rtol=0)


def test_extract_features_tool_npy_utterance_layers(corpus):
    """The older flags: several --layers values keep a layer axis; --pooling cls is the CLS token."""
    root, fx, clips = corpus
    extract_tool("--encoder", str(root / "enc"), "--manifest", str(root / "train.tsv"), "--out",
                 str(root / "npy"), "--format", "npy", "--layers", "0", "-1", "--pooling", "cls", "--device", "cpu")
    index = json.loads((root / "npy" / "index.json").read_text())
    emb = np.load(root / "npy" / "shard_00000" / "embeddings.npy")
    assert emb.shape == (5, 2, 96)
    shard, row = index["clips"]["audio/3.wav"]
    ref = fx.extract_features([clips[3]], layers=[0, -1]).embeddings[0]
    np.testing.assert_allclose(emb[row], ref.numpy(), atol=1e-5)
    assert "missing.tsv" in extract_tool("--encoder", str(root / "enc"), "--manifest", str(root / "missing.tsv"),
                                         "--out", str(root / "x"), ok=False).stderr


def test_outputs_can_train_a_downstream_head():
    fx = tiny_extractor()
    feats = fx.extract_features(waves([1.0, 1.5]), granularity="frame").embeddings
    assert not feats.requires_grad
    head = torch.nn.Linear(96, 2)
    head(feats).sum().backward()  # inference-mode tensors would refuse this
    assert head.weight.grad is not None


def test_token_poolings_of_a_long_clip_pool_the_merged_patch_grid():
    """utterance=<token pooling> is eat.model.pooling.pool_tokens on the patch grid that merges overlapping
    windows (every time column once), for every registry pooling; clip_embeddings concatenates the blocks."""
    from eat.model.pooling import TOKEN_POOLINGS, pool_tokens

    fx = tiny_extractor()
    clips = waves([7.3, 1.1])  # a long clip (5 windows) and a short one in one batch
    patches = fx.extract_features(clips, granularity="patch", layers=[0, -1])
    fp = fx.encoder.num_freq_patches
    for pooling in TOKEN_POOLINGS:
        got = fx.extract_features(clips, utterance=pooling, layers=[0, -1]).embeddings  # (B, 2, D')
        for b in range(2):
            n = int((~patches.mask[b]).sum())
            for k in range(2):
                tok = patches.embeddings[b, k, :n]
                if pooling.startswith("band-"):  # plain reference: per band over time, bands concatenated
                    grid = tok.reshape(-1, fp, tok.shape[-1])
                    ref = [grid.mean(0).flatten()] + ([grid.std(0, unbiased=False).flatten()] if "std" in pooling else [])
                else:
                    ref = [tok.mean(0)] + ([tok.std(0, unbiased=False)] if "std" in pooling else [])
                torch.testing.assert_close(got[b, k], torch.cat(ref), atol=1e-5, rtol=0)
        flat = fx.clip_embeddings(clips, layers="0+-1", pooling=pooling)
        torch.testing.assert_close(flat, got.flatten(1), atol=0, rtol=0)
        assert flat.shape[1] == fx.clip_embedding_dim("0+-1", pooling)
        direct = pool_tokens(patches.embeddings[:, 1], patches.mask, pooling, fp)
        torch.testing.assert_close(got[:, 1], direct, atol=1e-6, rtol=0)


def test_clip_embeddings_default_is_every_block_band_meanstd():
    fx = tiny_extractor()
    clips = waves([1.5])
    emb = fx.clip_embeddings(clips)
    assert emb.shape == (1, fx.num_layers * 2 * fx.encoder.num_freq_patches * fx.embed_dim)
    torch.testing.assert_close(emb, fx.clip_embeddings(clips, layers="all", pooling="band-meanstd"), atol=0, rtol=0)
    with pytest.raises(ValueError, match="unknown pooling"):
        fx.clip_embeddings(clips, pooling="max")
