from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from aptops.core.config import check_choice, check_range, load_config, parse_overrides
from aptops.core.errors import ConfigError
from aptops.data import CleanConfig


@dataclass(frozen=True)
class Inner:
    rate: float = 0.5

    def __post_init__(self):
        check_range("inner.rate", self.rate, min_value=0.0, max_value=1.0)


@dataclass(frozen=True)
class Outer:
    name: str = "x"
    steps: int = 10
    enabled: bool = False
    tags: tuple[str, ...] = ()
    limit: int | None = None
    inner: Inner = field(default_factory=Inner)


def test_yaml_then_overrides_win(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: fromfile\nsteps: 3\ninner:\n  rate: 0.25\n")
    cfg = load_config(Outer, path, overrides=["steps=7", "enabled=true", "tags=[a, b]", "inner.rate=0.75"])
    assert cfg == Outer(name="fromfile", steps=7, enabled=True, tags=("a", "b"), inner=Inner(0.75))


def test_none_means_off():
    assert load_config(Outer, overrides=["limit=none"]).limit is None
    assert load_config(Outer, overrides=["limit=5"]).limit == 5


def test_unknown_key_lists_known_keys():
    with pytest.raises(ConfigError, match=r"unknown config key 'stepz'.*steps") as info:
        load_config(Outer, overrides=["stepz=1"])
    assert info.value.field == "stepz"


def test_wrong_type_names_field_and_value():
    with pytest.raises(ConfigError, match=r"steps must be an integer, got 'ten'"):
        load_config(Outer, overrides=["steps=ten"])
    with pytest.raises(ConfigError, match=r"enabled must be true or false, got 'maybe'"):
        load_config(Outer, overrides=["enabled=maybe"])


def test_nested_range_error_names_field_value_and_range():
    with pytest.raises(ConfigError, match=r"inner.rate=1.5 is out of range: allowed \[0.0, 1.0\]"):
        load_config(Outer, overrides=["inner.rate=1.5"])


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["novalue"])


def test_missing_or_non_mapping_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Outer, tmp_path / "nope.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(Outer, bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Outer, broken)


def test_configs_are_frozen():
    cfg = CleanConfig()
    with pytest.raises(AttributeError):
        cfg.strategy = "other"  # type: ignore[misc]


def test_stage_config_validates_on_construction():
    with pytest.raises(ConfigError, match=r"strategy='shiny' is not supported: choose one of basic"):
        CleanConfig(strategy="shiny")
    with pytest.raises(ConfigError, match=r"min_chars=-1 is out of range"):
        load_config(CleanConfig, overrides=["min_chars=-1"])
    with pytest.raises(ConfigError, match=r"custom_rules\[0\] pattern '\(' is not a valid regular expression"):
        CleanConfig(custom_rules=(("(", "x"),))


def test_check_helpers_exclusive_bounds():
    check_range("lr", 0.1, min_value=0.0, min_inclusive=False)
    with pytest.raises(ConfigError, match=r"allowed \(0.0, \+inf\]"):
        check_range("lr", 0.0, min_value=0.0, min_inclusive=False)
    with pytest.raises(ConfigError, match="choose one of a, b"):
        check_choice("x", "c", ["a", "b"])
