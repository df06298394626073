from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest

from aptops.core.config import check_choice, check_range, from_dict, load_config, parse_overrides
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


def _bomb(levels: int = 9) -> str:
    """The "billion laughs" document: each level lists the one before nine times (9**9 values expanded)."""
    names = [chr(ord("a") + i) for i in range(levels)]
    lines = [f"{names[0]}: &{names[0]} [{', '.join(['lol'] * 9)}]"]
    lines += [f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]" for p, n in itertools.pairwise(names)]
    return "\n".join(lines) + f"\nmin_chars: *{names[-1]}\n"


def test_a_yaml_bomb_is_refused_before_it_is_built(tmp_path):
    """Issue 25: nine levels of anchors under min_chars grew to 1.7 GB while the error message formatted them."""
    import resource

    path = tmp_path / "bomb.yaml"
    path.write_text(_bomb())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ConfigError, match=r"bomb.yaml'.*expands to more than 100000 values"):
        load_config(CleanConfig, path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50 * 1024  # KiB: nothing was expanded


def test_anchors_and_merge_keys_still_work_under_the_limits():
    from aptops.core.config import load_yaml

    text = "base: &b {x: 1, y: [1, 2]}\nother: {<<: *b, y: 3}\nagain: *b\n"
    assert load_yaml(text, source="t") == {"base": {"x": 1, "y": [1, 2]}, "other": {"x": 1, "y": 3},
                                           "again": {"x": 1, "y": [1, 2]}}
    with pytest.raises(ConfigError, match="nested deeper than 64 levels"):
        load_yaml("[" * 10_000 + "]" * 10_000, source="deep")
    with pytest.raises(ConfigError, match="nested deeper than 5 levels"):
        load_yaml("a: {b: {c: {d: {e: {f: {g: 1}}}}}}", source="deep", max_depth=5)
    with pytest.raises(ConfigError, match="t is not valid YAML"):
        load_yaml("a: [1, 2", source="t")


def test_a_huge_value_is_shown_cut_in_the_error():
    with pytest.raises(ConfigError) as info:
        from_dict(CleanConfig, {"min_chars": [list(range(1000))] * 1000})
    assert len(str(info.value)) < 400, str(info.value)
    assert "min_chars must be an integer" in str(info.value)


def test_with_overrides_replaces_nested_fields_and_validates():
    from aptops.core.config import with_overrides
    from aptops.prune import PruneConfig

    base = PruneConfig(method="wanda")
    cfg = with_overrides(base, {"training": {"lora_r": "8"}, "training.block_size": 64, "target_sparsity": 0.25})
    assert (cfg.method, cfg.target_sparsity, cfg.training.lora_r, cfg.training.block_size) == ("wanda", 0.25, 8, 64)
    assert cfg.training.resume == base.training.resume and with_overrides(base, {}) is base
    with pytest.raises(ConfigError, match=r"unknown config key 'training.lora' for TrainConfig \(did you mean 'lora_r'\?\): known keys are .*lora_r"):
        with_overrides(base, {"training": {"lora": 8}})
    with pytest.raises(ConfigError, match="block_size=-3 is out of range"):
        with_overrides(base, {"training.block_size": -3})


def test_control_characters_in_yaml_are_a_config_error():
    """Found by the property test (a --set value '\\x08'): PyYAML's reader refuses it while the loader is made."""
    from aptops.core.config import load_yaml

    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml("\x08", source="t")
    assert load_config(Outer, overrides=["name=\x08"]).name == "\x08"  # an override value stays the text it was
