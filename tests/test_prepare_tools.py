"""tools/prepare_{esc50,audioset,spc2}.py on small synthetic layouts."""

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import procs
import soundfile

from eat.data import synthetic as syn
from eat.data.loaders import class_balanced_weights
from eat.data.manifest import read_eat_labels, read_manifest, read_path_label_csv

ROOT = Path(__file__).resolve().parents[1]
SR = 16000


def run_tool(name: str, *args: str | Path, ok: bool = True) -> subprocess.CompletedProcess:
    """``tools/<name>.py`` as a user runs it; ``ok``: it must succeed, else it must fail with one line."""
    proc = procs.run([sys.executable, str(ROOT / "tools" / f"{name}.py"), *map(str, args)], capture_output=True,
                          text=True)
    if ok:
        assert proc.returncode == 0, proc.stderr[-3000:]
    else:
        last = proc.stderr.strip().splitlines()[-1]  # after any progress bar
        assert proc.returncode != 0 and last.startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    return proc


def test_prepare_esc50(tmp_path):
    root = syn.make_esc50_like(tmp_path / "esc", num_classes=3, clips_per_class=5, duration=0.2, seed=0)
    assert "1: 3, 2: 3, 3: 3, 4: 3, 5: 3" in run_tool("prepare_esc50", root, tmp_path / "out").stdout
    man = read_manifest(tmp_path / "out" / "esc50.tsv")
    assert len(man) == 15 and all(n == int(0.2 * SR) for n in man.num_samples())
    train = read_path_label_csv(tmp_path / "out" / "fold2_train.csv")
    test = read_path_label_csv(tmp_path / "out" / "fold2_eval.csv", class_names=train.class_names)
    assert len(train) == 12 and len(test) == 3
    assert all(p.name.startswith("2-") for p in (it.path for it in test.items))
    assert not any(it.path.name.startswith("2-") for it in train.items)
    (root / "audio" / man.entries[0][0]).unlink()
    err = run_tool("prepare_esc50", root, tmp_path / "out2", ok=False).stderr
    assert "not found" in err or "unreadable" in err


def test_prepare_audioset(tmp_path):
    mids = ["/m/a", "/m/b", "/m/c"]
    class_csv = tmp_path / "classes.csv"
    class_csv.write_text('index,mid,display_name\n' + "".join(f'{i},{m},"class {i}"\n' for i, m in enumerate(mids)))
    ids = ["abcdefghij0", "abcdefghij1", "x-_yz123456", "missing0000"]
    labels = [["/m/a"], ["/m/a", "/m/b"], ["/m/c"], ["/m/b"]]
    segs = "# Segments csv\n# YTID, start_seconds, end_seconds, positive_labels\n" + "".join(
        f'{y}, 30.000, 40.000, "{",".join(ls)}"\n' for y, ls in zip(ids, labels, strict=True))
    (tmp_path / "segs.csv").write_text(segs)
    audio = tmp_path / "audio"
    (audio / "sub").mkdir(parents=True)
    for name in ("Yabcdefghij0.wav", "sub/abcdefghij1_30.000.wav", "x-_yz123456.wav", "unrelated.wav"):
        soundfile.write(audio / name, np.zeros(800), SR)
    captured = run_tool("prepare_audioset", tmp_path / "segs.csv", audio, tmp_path / "out" / "bal",
                        "--class-csv", class_csv, "--weights")
    assert "wrote 3 clips" in captured.stdout and "1 segment(s) have no audio" in captured.stderr
    ls = read_eat_labels(tmp_path / "out" / "bal.tsv", tmp_path / "out" / "bal.lbl", class_csv)
    got = {it.path.name: it.labels for it in ls.items}
    assert got == {"Yabcdefghij0.wav": (0,), "abcdefghij1_30.000.wav": (0, 1), "x-_yz123456.wav": (2,)}
    weights = [float(x) for x in (tmp_path / "out" / "bal_weights.csv").read_text().split()]
    np.testing.assert_allclose(weights, class_balanced_weights(ls.items, 3).numpy(), rtol=1e-5)
    (tmp_path / "bad.csv").write_text('zzzzzzzzzzz, 0, 10, "/m/unknown"\n')
    err = run_tool("prepare_audioset", tmp_path / "bad.csv", audio, tmp_path / "o", "--class-csv", class_csv, ok=False)
    assert "bad.csv:1: unknown" in err.stderr


def test_prepare_spc2(tmp_path):
    root = tmp_path / "sc"
    for word in ("go", "stop", "_background_noise_"):
        (root / word).mkdir(parents=True)
        for i in range(3):
            soundfile.write(root / word / f"s{i}_nohash_0.wav", np.zeros(160), SR)
    (root / "validation_list.txt").write_text("go/s0_nohash_0.wav\n")
    (root / "testing_list.txt").write_text("stop/s0_nohash_0.wav\n")
    assert "train: 4 clips, valid: 1 clips, test: 1 clips" in run_tool("prepare_spc2", root, tmp_path / "out").stdout
    with open(tmp_path / "out" / "test.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["path", "label"] and rows[1][1] == "stop" and rows[1][0].endswith("stop/s0_nohash_0.wav")
    err = run_tool("prepare_spc2", tmp_path / "nothing", tmp_path / "o", ok=False).stderr
    assert "not found: the Speech Commands v2 folder" in err
