"""Component helpers: JSON string parameters."""

from __future__ import annotations

import pytest

from aptops.core.errors import ConfigError
from aptops.core.runtime import json_param


def test_json_param_reads_json_and_names_the_parameter_when_it_is_not():
    assert json_param('{"warmup_ratio": 0.1}', "training_args") == {"warmup_ratio": 0.1}
    assert json_param("", "training_args") == {} and json_param("  ", "x", default=[]) == []
    with pytest.raises(ConfigError, match="strategies is not valid JSON"):
        json_param("{response: 1}", "strategies")


def test_list_param_splits_strips_and_drops_empty_items():
    from aptops.core.runtime import list_param

    assert list_param(" s3://a/x , oss://b/y,,") == ["s3://a/x", "oss://b/y"]
    assert list_param("") == [] and list_param("text") == ["text"]
