"""Validation by group (issue 23, item 7): a ``group`` column keeps speakers / sources together."""

import torch

from eat.data.manifest import read_path_label_csv
from eat.eval.probe import probe, validation_split
from eat.train.finetune import holdout_split


def _csv(tmp_path, groups=True):
    rows = ["path,label,group" if groups else "path,label"]
    for i in range(40):
        rows.append(f"c{i}.wav,{'ab'[i % 2]}" + (f",spk{i % 5}" if groups else ""))
    path = tmp_path / "train.csv"
    path.write_text("\n".join(rows) + "\n")
    return read_path_label_csv(path)


def test_group_column_draws_validation_by_group(tmp_path):
    labels = _csv(tmp_path)
    groups = labels.groups()
    assert groups[:6] == ["spk0", "spk1", "spk2", "spk3", "spk4", "spk0"]
    fit, val = validation_split(labels.targets(), "multiclass", 0.2, 0, groups)
    assert not {groups[i] for i in fit} & {groups[i] for i in val} and len(val) == 8
    fit_set, val_set, _ = holdout_split(labels, 0.2, 0)
    assert not {it.group for it in fit_set.items} & {it.group for it in val_set.items}
    assert _csv(tmp_path, groups=False).groups() is None  # no column: the stratified clip split as before


def test_probe_with_groups_only_changes_the_validation_split():
    torch.manual_seed(0)
    x, y = torch.randn(40, 4), torch.arange(40) % 2
    x[:, 0] += 3 * y
    groups = [f"g{i % 4}" for i in range(40)]
    a = probe(x, y, x, y, weight_decays=(1e-3, 1.0), groups=groups)
    b = probe(x, y, x, y, weight_decays=(1e-3, 1.0))
    assert set(a["val_scores"]) == set(b["val_scores"]) and a["num_train"] == 40
