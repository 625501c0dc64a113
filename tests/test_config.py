"""The strict config loader (eat/config.py): unknown keys, wrong types, nested overrides, round trip."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest
import yaml

from eat.config import ConfigError, from_dict, load_config, to_dict


@dataclass
class Inner:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    name: str = "adamw"


@dataclass
class Outer:
    steps: int = 10
    flag: bool = False
    mode: Literal["ddp", "fsdp"] = "ddp"
    path: str | None = None
    tags: list[str] = field(default_factory=list)
    optim: Inner = field(default_factory=Inner)


def test_defaults_without_file_or_overrides():
    assert load_config(Outer) == Outer()


def test_unknown_keys_are_named_top_level_and_nested(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key stepz; known: flag, mode, optim, path, steps, tags"):
        load_config(Outer, overrides=["stepz=3"])
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown config key optim\.lrr in 'optim'"):
        load_config(Outer, f)


@pytest.mark.parametrize(
    "override, message",
    [
        ("steps=ten", r"^steps: expected an integer, got 'ten'$"),
        ("steps=1.5", r"^steps: expected an integer"),
        ("flag=yes please", r"^flag: expected true/false"),
        ("mode=tpu", r"^mode: 'tpu' is not one of \['ddp', 'fsdp'\]$"),
        ("optim.lr=fast", r"^optim\.lr: expected a number, got 'fast'$"),
        ("optim.betas=[0.9]", r"^optim\.betas: expected 2 values, got 1$"),
        ("optim=3", r"^optim: expected a mapping, got 3$"),
        ("tags=notalist", r"^tags: expected a list"),
        ("steps", r"not of the form key\.sub=value"),
    ],
)
def test_wrong_types_give_one_line_errors_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(Outer, overrides=[override])
    assert "\n" not in str(info.value)


def test_nested_overrides_apply_over_the_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("steps: 5\noptim:\n  lr: 5e-4\n  name: sgd\n")
    cfg = load_config(Outer, f, ["optim.lr=1e-2", "optim.betas=[0.8, 0.95]", "flag=true", "path=null",
                                 "tags=[a, b]", "mode=fsdp"])
    assert cfg == Outer(steps=5, flag=True, mode="fsdp", path=None, tags=["a", "b"],
                        optim=Inner(lr=1e-2, betas=(0.8, 0.95), name="sgd"))
    assert isinstance(cfg.optim.betas, tuple)
    assert load_config(Outer, f).optim.lr == 5e-4  # YAML 1.1 reads "5e-4" as a string; coerced


def test_round_trip_through_yaml(tmp_path):
    cfg = Outer(steps=3, flag=True, path="/x", tags=["t"], optim=Inner(lr=0.25, betas=(0.5, 0.6)))
    f = tmp_path / "resolved.yaml"
    f.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    assert load_config(Outer, f) == cfg
    assert from_dict(Outer, to_dict(cfg)) == cfg


def test_bad_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="missing.yaml: config file not found"):
        load_config(Outer, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1,\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(Outer, bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(Outer, listy)
