"""Config validation: both shipped configs pass; broken ones name the key and the rule."""

from __future__ import annotations

import copy

import pytest
import yaml

from bfm.config import ConfigError, load_config, validate_config
from bfm.contracts.grid import Grid
from bfm.testing import EUROPE_GRID as EUROPE
from tests.conftest import ROOT


@pytest.fixture
def demo() -> dict:
    return yaml.safe_load((ROOT / "config/config.yaml").read_text())


def test_shipped_configs_validate_and_get_defaults():
    demo = load_config(ROOT / "config/config.yaml")
    europe = load_config(ROOT / "config/europe.yaml")
    assert demo["sources"]["era5"]["mode"] == "sample"
    assert Grid.from_dict(europe["grid"]) == EUROPE
    assert Grid.from_dict(europe["grid"]).shape == (153, 321)
    assert (europe["time"]["start"], europe["time"]["end"]) == ("2000-01-01", "2020-12-31")
    assert europe["sources"]["gbif"]["seed"] == 0  # default filled in


@pytest.mark.parametrize("step", ["6h", "1D", "1MS"])
def test_every_step_is_accepted(demo, step):
    cfg = copy.deepcopy(demo)
    cfg["time"].update(step=step, start="2010-01-01", end="2010-12-31", eval_start="2010-10-01")
    assert validate_config(cfg)["time"]["step"] == step


@pytest.mark.parametrize(
    ("edit", "key", "rule"),
    [
        (lambda c: c["time"].update(step="3h"), "time.step", "enum"),
        (lambda c: c["grid"].pop("res"), "grid", "required"),
        (lambda c: c["grid"].update(res=-1), "grid.res", "exclusiveMinimum"),
        (lambda c: c.update(colour="blue"), "<top level>", "additionalProperties"),
        (lambda c: c["sources"]["era5"].update(mode="file"), "sources.era5", "required"),
        (lambda c: c["train"].update(steps="many"), "train.steps", "type"),
        (lambda c: c["model"].update(preset="huge"), "model.preset", "enum"),
    ],
)
def test_schema_errors_name_key_and_rule(demo, edit, key, rule):
    edit(demo)
    with pytest.raises(ConfigError) as err:
        validate_config(demo, "my.yaml")
    message = str(err.value)
    assert message.startswith("my.yaml: key ")
    assert f"'{key}'" in message and f"'{rule}'" in message


def test_cross_key_rules(demo):
    cfg = copy.deepcopy(demo)
    cfg["grid"]["lat_min"] = 44.3
    with pytest.raises(ConfigError, match="not a multiple of res"):
        validate_config(cfg)
    cfg = copy.deepcopy(demo)
    cfg["time"]["eval_start"] = "2011-01-01"
    with pytest.raises(ConfigError, match="time.eval_start"):
        validate_config(cfg)
    cfg = copy.deepcopy(demo)
    cfg["time"].update(step="1MS")
    with pytest.raises(ConfigError, match="at least 2"):
        validate_config(cfg)


def test_unreadable_config_is_reported(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(bad)


def test_impossible_date_names_the_key(demo):
    demo["time"]["start"] = "2010-02-30"
    with pytest.raises(ConfigError, match=r"key 'time.start' breaks the schema rule 'format'"):
        validate_config(demo, "my.yaml")


def test_start_after_end_is_reported_as_such(demo):
    demo["time"].update(start="2010-03-01", end="2010-02-01", eval_start="2010-02-15")
    with pytest.raises(ConfigError, match=r"'time.end' \(2010-02-01\) must lie after time.start"):
        validate_config(demo)


def test_sources_come_from_the_registry(demo):
    from bfm.contracts.catalogue import DEFAULT_LEVELS

    del demo["levels"]
    assert validate_config(copy.deepcopy(demo))["levels"] == list(DEFAULT_LEVELS)
    demo["sources"]["nosuch"] = {"mode": "sample"}
    with pytest.raises(
        ConfigError,
        match=r"key 'sources' breaks the schema rule "
        r"'additionalProperties'.*'nosuch'",
    ):
        validate_config(demo)
    del demo["sources"]["nosuch"]
    demo["sources"]["era5"]["mode"] = "download"
    assert validate_config(demo)["sources"]["era5"]["mode"] == "download"
    demo["plugins"] = ["no_such_plugin_module"]
    with pytest.raises(ConfigError, match=r"key 'plugins': cannot import 'no_such_plugin_module'"):
        validate_config(demo)
    demo["plugins"] = ["missing/toy.py"]
    with pytest.raises(ConfigError, match=r"'plugins': missing/toy\.py is not a file"):
        validate_config(demo)
