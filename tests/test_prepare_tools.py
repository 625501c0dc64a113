"""tools/prepare_{esc50,audioset,spc2}.py on small synthetic layouts."""

import csv
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))  # the tools import their sibling make_manifest like scripts do

import make_synthetic_data as syn  # noqa: E402
import prepare_audioset  # noqa: E402
import prepare_esc50  # noqa: E402
import prepare_spc2  # noqa: E402

from eat.data.loaders import class_balanced_weights  # noqa: E402
from eat.data.manifest import read_eat_labels, read_manifest, read_path_label_csv  # noqa: E402

SR = 16000


def test_prepare_esc50(tmp_path, capsys):
    root = syn.make_esc50_like(tmp_path / "esc", num_classes=3, clips_per_class=5, duration=0.2, seed=0)
    prepare_esc50.main([str(root), str(tmp_path / "out")])
    assert "1: 3, 2: 3, 3: 3, 4: 3, 5: 3" in capsys.readouterr().out
    man = read_manifest(tmp_path / "out" / "esc50.tsv")
    assert len(man) == 15 and all(n == int(0.2 * SR) for n in man.num_samples())
    train = read_path_label_csv(tmp_path / "out" / "fold2_train.csv")
    test = read_path_label_csv(tmp_path / "out" / "fold2_eval.csv", class_names=train.class_names)
    assert len(train) == 12 and len(test) == 3
    assert all(p.name.startswith("2-") for p in (it.path for it in test.items))
    assert not any(it.path.name.startswith("2-") for it in train.items)
    (root / "audio" / man.entries[0][0]).unlink()
    with pytest.raises(SystemExit, match="error: .*not found|error: .*unreadable"):
        prepare_esc50.main([str(root), str(tmp_path / "out2")])


def test_prepare_audioset(tmp_path, capsys):
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
    prepare_audioset.main([str(tmp_path / "segs.csv"), str(audio), str(tmp_path / "out" / "bal"),
                           "--class-csv", str(class_csv), "--weights"])
    captured = capsys.readouterr()
    assert "wrote 3 clips" in captured.out and "1 segment(s) have no audio" in captured.err
    ls = read_eat_labels(tmp_path / "out" / "bal.tsv", tmp_path / "out" / "bal.lbl", class_csv)
    got = {it.path.name: it.labels for it in ls.items}
    assert got == {"Yabcdefghij0.wav": (0,), "abcdefghij1_30.000.wav": (0, 1), "x-_yz123456.wav": (2,)}
    weights = [float(x) for x in (tmp_path / "out" / "bal_weights.csv").read_text().split()]
    np.testing.assert_allclose(weights, class_balanced_weights(ls.items, 3).numpy(), rtol=1e-5)
    (tmp_path / "bad.csv").write_text('zzzzzzzzzzz, 0, 10, "/m/unknown"\n')
    with pytest.raises(SystemExit, match=r"bad.csv:1: unknown"):
        prepare_audioset.main([str(tmp_path / "bad.csv"), str(audio), str(tmp_path / "o"), "--class-csv", str(class_csv)])


def test_prepare_spc2(tmp_path, capsys):
    root = tmp_path / "sc"
    for word in ("go", "stop", "_background_noise_"):
        (root / word).mkdir(parents=True)
        for i in range(3):
            soundfile.write(root / word / f"s{i}_nohash_0.wav", np.zeros(160), SR)
    (root / "validation_list.txt").write_text("go/s0_nohash_0.wav\n")
    (root / "testing_list.txt").write_text("stop/s0_nohash_0.wav\n")
    prepare_spc2.main([str(root), str(tmp_path / "out")])
    assert "train: 4 clips, valid: 1 clips, test: 1 clips" in capsys.readouterr().out
    with open(tmp_path / "out" / "test.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["path", "label"] and rows[1][1] == "stop" and rows[1][0].endswith("stop/s0_nohash_0.wav")
    with pytest.raises(SystemExit, match="error: .*Speech Commands root not found"):
        prepare_spc2.main([str(tmp_path / "nothing"), str(tmp_path / "o")])
