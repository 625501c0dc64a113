import json
from pathlib import Path

import pytest

from eat.data.manifest import (
    ManifestError,
    read_ast_json,
    read_class_csv,
    read_eat_labels,
    read_esc50,
    read_manifest,
    read_path_label_csv,
    write_manifest,
)


def test_manifest_round_trip_and_tolerant_whitespace(tmp_path):
    entries = [("a/x.wav", 16000), ("b/with space.flac", 5), ("c.wav", 0)]
    p = write_manifest(tmp_path / "m.tsv", "/data/root", entries)
    text = p.read_text()
    assert text.splitlines()[1] == "a/x.wav\t16000"
    m = read_manifest(p)
    assert m.root == Path("/data/root") and m.entries == entries and len(m) == 3
    assert m.path(1) == Path("/data/root/b/with space.flac")
    assert m.num_samples() == [16000, 5, 0]
    # spaces instead of tabs, trailing blanks and blank lines are accepted
    (tmp_path / "w.tsv").write_text("/r  \n x.wav    12 \n\n y.wav 3\n")
    m2 = read_manifest(tmp_path / "w.tsv")
    assert m2.entries == [("x.wav", 12), ("y.wav", 3)] and m2.paths() == [Path("/r/x.wav"), Path("/r/y.wav")]


@pytest.mark.parametrize(
    "body, msg",
    [("", ":1: empty manifest"), ("/r\na.wav 10\nb.wav\n", ":3: expected"), ("/r\na.wav ten\n", ":2: expected .* the last column 'ten' is not"),
     ("/r\ngood.wav\t48000\textra\n", ":2: 3 tab-separated columns, expected 2")],
)
def test_manifest_errors_name_file_and_line(tmp_path, body, msg):
    p = tmp_path / "bad.tsv"
    p.write_text(body)
    with pytest.raises(ManifestError, match=msg) as e:
        read_manifest(p)
    assert "bad.tsv" in str(e.value)


def test_missing_manifest(tmp_path):
    with pytest.raises(ManifestError, match="nope.tsv: file not found"):
        read_manifest(tmp_path / "nope.tsv")


def _class_csv(path: Path) -> Path:
    path.write_text('index,mid,display_name\n0,/m/a,"Speech, male"\n2,/m/c,Music\n1,/m/b,Dog\n')
    return path


def test_class_csv_with_and_without_header(tmp_path):
    mids, names = read_class_csv(_class_csv(tmp_path / "c.csv"))
    assert mids == {"/m/a": 0, "/m/b": 1, "/m/c": 2} and names == ["Speech, male", "Dog", "Music"]
    (tmp_path / "n.csv").write_text("0,/m/a\n1,/m/b\n")
    assert read_class_csv(tmp_path / "n.csv") == ({"/m/a": 0, "/m/b": 1}, ["/m/a", "/m/b"])
    (tmp_path / "gap.csv").write_text("0,/m/a\n2,/m/b\n")
    with pytest.raises(ManifestError, match="gap.csv: class indices must be 0..1"):
        read_class_csv(tmp_path / "gap.csv")


def test_eat_lbl_labels(tmp_path):
    man = write_manifest(tmp_path / "train.tsv", tmp_path, [("x.wav", 10), ("y.wav", 20)])
    (tmp_path / "train.lbl").write_text("idx /m/c,/m/a\nidy /m/b\n")
    ls = read_eat_labels(man, tmp_path / "train.lbl", _class_csv(tmp_path / "c.csv"))
    assert ls.multi_label and ls.num_classes == 3 and len(ls) == 2
    assert ls.items[0].path == tmp_path / "x.wav" and ls.items[0].labels == (0, 2)
    assert ls.items[1].labels == (1,)
    (tmp_path / "short.lbl").write_text("idx /m/a\n")
    with pytest.raises(ManifestError, match="short.lbl: 1 label lines but the manifest lists 2"):
        read_eat_labels(man, tmp_path / "short.lbl", tmp_path / "c.csv")
    (tmp_path / "bad.lbl").write_text("idx /m/a\nidy /m/zzz\n")
    with pytest.raises(ManifestError, match=r"bad.lbl:2: unknown label id\(s\) /m/zzz"):
        read_eat_labels(man, tmp_path / "bad.lbl", tmp_path / "c.csv")


def test_ast_json(tmp_path):
    data = {"data": [{"wav": "/abs/a.wav", "labels": "/m/b"}, {"wav": "rel/b.wav", "labels": "/m/a,/m/c"}]}
    (tmp_path / "d.json").write_text(json.dumps(data))
    ls = read_ast_json(tmp_path / "d.json", _class_csv(tmp_path / "c.csv"))
    assert [it.path for it in ls.items] == [Path("/abs/a.wav"), tmp_path / "rel/b.wav"]
    assert [it.labels for it in ls.items] == [(1,), (0, 2)] and ls.multi_label
    single = read_ast_json(tmp_path / "d.json", tmp_path / "c.csv", root="/x", multi_label=False)
    assert not single.multi_label and single.items[1].path == Path("/x/rel/b.wav")
    (tmp_path / "e.json").write_text('{"data": [{"wav": "a.wav"}]}')
    with pytest.raises(ManifestError, match=r"e.json: data\[0\]: expected"):
        read_ast_json(tmp_path / "e.json", tmp_path / "c.csv")
    (tmp_path / "f.json").write_text('{"data": [\n oops')
    with pytest.raises(ManifestError, match="f.json:2: not valid JSON"):
        read_ast_json(tmp_path / "f.json", tmp_path / "c.csv")


def _esc50(root: Path) -> Path:
    (root / "meta").mkdir(parents=True)
    rows = ["filename,fold,target,category,esc10,src_file,take"]
    cats = ["dog", "rain", "siren"]
    for fold in range(1, 6):
        for t, c in enumerate(cats):
            rows.append(f"{fold}-{100 + t}-A-{t}.wav,{fold},{t},{c},{t == 0},{100 + t},A")
    (root / "meta" / "esc50.csv").write_text("\n".join(rows) + "\n")
    return root


def test_esc50_fold_filter(tmp_path):
    root = _esc50(tmp_path / "esc")
    every = read_esc50(root)
    assert len(every) == 15 and every.class_names == ["dog", "rain", "siren"] and not every.multi_label
    test = read_esc50(root, folds=[2])
    assert [it.path.name for it in test.items] == ["2-100-A-0.wav", "2-101-A-1.wav", "2-102-A-2.wav"]
    assert [it.labels for it in test.items] == [(0,), (1,), (2,)]
    assert test.items[0].path == root / "audio" / "2-100-A-0.wav"
    train = read_esc50(root, folds=[1, 3, 4, 5])
    assert len(train) == 12 and not {it.path.name[0] for it in train.items} & {"2"}
    with pytest.raises(ManifestError, match=r"no clips in fold\(s\) \[7\]"):
        read_esc50(root, folds=[7])
    with pytest.raises(ManifestError, match="esc50.csv: file not found"):
        read_esc50(tmp_path)


def test_esc50_inconsistent_category(tmp_path):
    root = _esc50(tmp_path / "esc")
    csv = root / "meta" / "esc50.csv"
    csv.write_text(csv.read_text() + "1-9-A-0.wav,1,0,cat,False,9,A\n")
    with pytest.raises(ManifestError, match="esc50.csv:17: target 0 is 'cat' here but 'dog' earlier"):
        read_esc50(root)


def test_path_label_csv_names_and_numbers(tmp_path):
    (tmp_path / "named.csv").write_text("path,label\na.wav,rain\nb.wav,dog\nc.wav,rain\n")
    ls = read_path_label_csv(tmp_path / "named.csv")
    assert ls.class_names == ["dog", "rain"] and [it.labels for it in ls.items] == [(1,), (0,), (1,)]
    assert ls.items[0].path == tmp_path / "a.wav"
    (tmp_path / "num.csv").write_text("/x/a.wav,3\n/x/b.wav,0\n")
    num = read_path_label_csv(tmp_path / "num.csv")
    assert num.class_names == ["0", "1", "2", "3"] and [it.labels for it in num.items] == [(3,), (0,)]
    (tmp_path / "test.csv").write_text("d.wav,dog\ne.wav,cow\n")
    with pytest.raises(ManifestError, match="test.csv:2: unknown label 'cow'"):
        read_path_label_csv(tmp_path / "test.csv", class_names=ls.class_names)
    (tmp_path / "bad.csv").write_text("a.wav\n")
    with pytest.raises(ManifestError, match="bad.csv:1: expected 'path,label'"):
        read_path_label_csv(tmp_path / "bad.csv")
