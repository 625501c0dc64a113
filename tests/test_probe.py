"""Linear probe / kNN: the fitted classifier is the penalised optimum (checked against scikit-learn),
kNN matches a brute-force loop, the split is stratified, and the CLI runs end to end."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import procs
import pytest
import torch

from eat.data.synthetic import make_esc50_like
from eat.eval.probe import fit_linear, knn_scores, probe, validation_split

ROOT = Path(__file__).resolve().parents[1]


def _blobs(n_per_class: int, num_classes: int, dim: int, spread: float, seed: int):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=gen, dtype=torch.float64) * 3
    y = torch.arange(num_classes).repeat_interleave(n_per_class)
    x = centres[y] + spread * torch.randn(len(y), dim, generator=gen, dtype=torch.float64)
    return x * torch.linspace(0.1, 10, dim, dtype=torch.float64) + 5, y  # unequal scales: standardisation matters


def test_multiclass_fit_is_the_penalised_optimum_sklearn_finds():
    from sklearn.linear_model import LogisticRegression

    x, y = _blobs(30, 4, 6, spread=4.0, seed=0)
    wd = 1e-2
    model = fit_linear(x, y, "multiclass", 4, wd)
    z = ((x - x.mean(0)) / x.std(0, unbiased=False)).numpy()
    ref = LogisticRegression(C=1.0 / (len(y) * wd), tol=1e-10, max_iter=10000).fit(z, y.numpy())
    ours = torch.softmax(model.scores(x), 1).numpy()
    np.testing.assert_allclose(ours, ref.predict_proba(z), atol=1e-5)


@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_wide_features_fit_in_the_row_span_gives_the_full_problems_optimum(task):
    # D = 200 > N = 24 (with a constant column and a duplicated one): the reduced fit must reach the same
    # penalised optimum as L-BFGS on all 200 weights, i.e. the same probabilities on new data
    x, y = _blobs(6, 4, 200, spread=6.0, seed=3)
    x[:, 7] = 1.0
    x[:, 9] = x[:, 8]
    if task == "multilabel":
        y = torch.nn.functional.one_hot(y, 4).double()
        y[::3, 0] = 1.0
    new = _blobs(5, 4, 200, spread=6.0, seed=4)[0]
    act = torch.softmax if task == "multiclass" else (lambda s, _: torch.sigmoid(s))
    def objective(m):
        s = m.scores(x)
        data = (torch.nn.functional.cross_entropy(s, y) if task == "multiclass"
                else torch.nn.functional.binary_cross_entropy_with_logits(s, y, reduction="sum") / len(y))
        return float(data + 0.5 * wd * m.weight.square().sum())

    for wd in (1e-1, 1e-3):
        full = fit_linear(x, y, task, 4, wd, reduce=False)
        fast = fit_linear(x, y, task, 4, wd)
        assert objective(fast) <= objective(full) + 1e-9  # at least as good an optimum of the same problem
        torch.testing.assert_close(act(fast.scores(new), 1), act(full.scores(new), 1), atol=1e-4, rtol=0)
        rows = (x - x.mean(0)) / fast.std  # the reduced weights lie in the span of the standardised rows
        assert torch.linalg.matrix_rank(torch.cat([fast.weight, rows])) == torch.linalg.matrix_rank(rows)


def test_multilabel_fit_matches_independent_binary_logistic_regressions():
    from sklearn.linear_model import LogisticRegression

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(80, 5, generator=gen, dtype=torch.float64)
    w = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    y = ((x @ w.T + 0.5 * torch.randn(80, 3, generator=gen, dtype=torch.float64)) > 0).double()
    wd = 1e-2
    model = fit_linear(x, y, "multilabel", 3, wd)
    z = ((x - x.mean(0)) / x.std(0, unbiased=False)).numpy()
    for c in range(3):
        # Our objective sums the C binary losses per clip; each class is then its own penalised problem.
        ref = LogisticRegression(C=1.0 / (80 * wd), tol=1e-10, max_iter=10000).fit(z, y[:, c].numpy())
        ours = torch.sigmoid(model.scores(x)[:, c]).numpy()
        np.testing.assert_allclose(ours, ref.predict_proba(z)[:, 1], atol=1e-5)


def test_knn_matches_brute_force_vote():
    gen = torch.Generator().manual_seed(2)
    tx, ty = torch.randn(40, 7, generator=gen, dtype=torch.float64), torch.randint(0, 3, (40,), generator=gen)
    vx = torch.randn(15, 7, generator=gen, dtype=torch.float64)
    k = 5
    ours = knn_scores(tx, ty, vx, k, "multiclass", 3, chunk=4)
    mean, std = tx.mean(0), tx.std(0, unbiased=False)
    for i in range(len(vx)):
        q = (vx[i] - mean) / std
        sims = [float(torch.dot(q, (t - mean) / std) / (q.norm() * ((t - mean) / std).norm())) for t in tx]
        nearest = np.argsort(sims)[::-1][:k]
        expected = np.zeros(3)
        for j in nearest:
            expected[int(ty[j])] += (1 + 1e-3 * sims[j]) / k
        np.testing.assert_allclose(ours[i].numpy(), expected, atol=1e-9)


def test_validation_split_is_stratified_disjoint_and_seeded():
    y = torch.tensor([0] * 10 + [1] * 5 + [2] * 1)
    fit, val = validation_split(y, "multiclass", 0.2, seed=3)
    assert sorted(torch.cat([fit, val]).tolist()) == list(range(16))
    assert torch.bincount(y[val], minlength=3).tolist() == [2, 1, 0]
    fit2, val2 = validation_split(y, "multiclass", 0.2, seed=3)
    assert torch.equal(val, val2) and torch.equal(fit, fit2)
    _, val3 = validation_split(y, "multiclass", 0.2, seed=4)
    assert not torch.equal(val, val3)


def test_probe_separates_blobs_and_is_at_chance_on_shuffled_labels():
    x, y = _blobs(40, 5, 16, spread=1.0, seed=5)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    out = probe(x[:150], y[:150], x[150:], y[150:], knn=5)
    assert out["metric"] == "accuracy" and out["score"] == 1.0 and out["knn"]["score"] == 1.0
    assert set(out["val_scores"]) == {"1e-06", "1e-05", "0.0001", "0.001", "0.01", "0.1"}
    assert json.loads(json.dumps(out)) == out
    noise = torch.randn(400, 16, generator=torch.Generator().manual_seed(6))
    labels = torch.randint(0, 5, (400,), generator=torch.Generator().manual_seed(7))
    chance = probe(noise[:300], labels[:300], noise[300:], labels[300:])
    assert chance["score"] < 0.4


def test_probe_multilabel_reports_map():
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(200, 8, generator=gen)
    y = (x[:, :4] > 0.3).float()
    out = probe(x[:150], y[:150], x[150:], y[150:], task="multilabel", knn=3)
    assert out["metric"] == "mAP" and out["score"] > 0.95 and out["num_classes"] == 4
    assert 0.0 < out["knn"]["score"] <= 1.0


def test_probe_rejects_bad_shapes():
    with pytest.raises(ValueError, match="labels"):
        probe(torch.randn(10, 3), torch.zeros(10, 2), torch.randn(4, 3), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="task"):
        probe(torch.randn(10, 3), torch.zeros(10), torch.randn(4, 3), torch.zeros(4), task="regression")


def run_probe_tool(*args: str) -> subprocess.CompletedProcess:
    """tools/linear_probe.py as a user runs it."""
    return procs.run([sys.executable, str(ROOT / "tools" / "linear_probe.py"), *args], capture_output=True,
                          text=True)


def test_cli_features_mode_end_to_end(tmp_path):
    x, y = _blobs(20, 3, 8, spread=1.0, seed=9)
    np.savez(tmp_path / "train.npz", x=x[::2].numpy(), y=y[::2].numpy())
    np.savez(tmp_path / "test.npz", x=x[1::2].numpy(), y=y[1::2].numpy())
    args = ["--train-features", str(tmp_path / "train.npz"), "--test-features", str(tmp_path / "test.npz"),
            "--knn", "3", "--json"]
    res = run_probe_tool(*args)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["score"] == 1.0 and out["num_train"] == 30 and out["knn"]["k"] == 3
    res = run_probe_tool(*args[:1], str(tmp_path / "missing.npz"), *args[2:])
    assert res.returncode != 0 and re.match(r"^error: .*missing.npz", res.stderr)
    assert len(res.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def esc50_like(tmp_path_factory):
    return make_esc50_like(tmp_path_factory.mktemp("esc"), num_classes=4, clips_per_class=5, duration=1.0, seed=0)


def test_cli_encoder_on_synthetic_esc50_end_to_end(tmp_path, esc50_like):
    from eat.audio.fbank import FrontendConfig
    from eat.export import save_export
    from eat.model.eat import eat_config
    from eat.model.vit import Encoder

    torch.manual_seed(0)
    enc = Encoder(eat_config("tiny").encoder)
    save_export(tmp_path / "enc", enc.cfg, enc.state_dict(), FrontendConfig(target_length=256))
    root = Path(shutil.copytree(esc50_like, tmp_path / "esc"))
    (root / "audio" / "1-100000-A-0.wav").write_bytes(b"broken")  # one unreadable test clip
    cmd = [sys.executable, str(ROOT / "tools" / "linear_probe.py"), "--encoder", str(tmp_path / "enc"),
           "--esc50-root", str(root), "--fold", "1", "--knn", "3", "--layers=-1", "--pooling", "mean", "--json",
           "--weight-decays", "1e-3", "1e-1"]
    res = procs.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["metric"] == "accuracy" and 0.0 <= out["score"] <= 1.0
    assert out["num_train"] == 16 and out["num_test"] == 3 and out["skipped"] == 1 and out["dim"] == 96
    assert set(out["val_scores"]) == {"0.001", "0.1"} and out["knn"]["k"] == 3
    assert "skipped" in res.stderr and "1-100000-A-0.wav" in res.stderr
    # the default cell: every block, mean+std per frequency band (8 bands of 128 mel bins / 16)
    res = procs.run(cmd[:8] + ["--json", "--weight-decays", "1e-1"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["layers"] == "all" and out["dim"] == 3 * 2 * 8 * 96
    res = procs.run(cmd[:8] + ["--layers", "3"], capture_output=True, text=True)
    assert res.returncode != 0 and res.stderr.strip().splitlines()[-1].startswith("error: layer spec '3'")


def test_cli_logmel_baseline_with_csv_splits(tmp_path, esc50_like):
    import csv

    rows = list(csv.DictReader(open(esc50_like / "meta" / "esc50.csv")))
    for name, keep in (("train", lambda f: f != 2), ("test", lambda f: f == 2)):
        lines = [f"{esc50_like / 'audio' / r['filename']},{r['category']}" for r in rows if keep(int(r["fold"]))]
        (tmp_path / f"{name}.csv").write_text("path,label\n" + "\n".join(lines) + "\n")
    res = run_probe_tool("--baseline", "logmel", "--train", str(tmp_path / "train.csv"),
                         "--test", str(tmp_path / "test.csv"))
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("accuracy ") and "16 train / 4 test clips, dim 256" in res.stdout
    res = run_probe_tool("--train", str(tmp_path / "train.csv"), "--test", str(tmp_path / "test.csv"))
    assert res.returncode != 0 and "exactly one of" in res.stderr
    res = run_probe_tool("--baseline", "logmel", "--train", str(tmp_path / "a.tsv"), "--test", str(tmp_path / "b.tsv"))
    assert res.returncode != 0 and "class-csv" in res.stderr
