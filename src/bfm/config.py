"""Load and validate the workflow config against workflow/schemas/config.schema.yaml.

The same check runs in ``workflow/rules/common.smk`` (before any job) and in every ``bfm``
command given ``--config``, so a broken config stops early with one message naming the key
and the rule it breaks. The schema file fixes the keys; the list of sources (``sources.*``)
and the default pressure levels come from the catalogue and the source registry, after the
config's ``plugins`` are loaded.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import pandas as pd
import yaml

from bfm import plugins
from bfm.contracts.catalogue import DEFAULT_LEVELS
from bfm.contracts.grid import Grid
from bfm.contracts.timeaxis import batch_starts, in_training

SCHEMA_PATH = Path(__file__).with_name("config.schema.yaml")


class ConfigError(ValueError):
    """The config breaks a rule of the schema or a cross-key rule."""


def _key(path: Any) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def _fill_defaults(schema: dict[str, Any], node: Any, root: dict[str, Any]) -> None:
    if "$ref" in schema:
        schema = root["$defs"][schema["$ref"].rsplit("/", 1)[-1]]
    if not isinstance(node, dict):
        return
    for name, sub in schema.get("properties", {}).items():
        if name not in node and "default" in sub:
            node[name] = copy.deepcopy(sub["default"])
        if name in node:
            _fill_defaults(sub, node[name], root)


def load_schema() -> dict[str, Any]:
    """The schema file, with the registered sources and the default levels filled in."""
    from bfm import sources

    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    props = schema["properties"]
    props["sources"]["properties"] = {name: {"$ref": "#/$defs/source"} for name in sources.names()}
    props["levels"]["default"] = list(DEFAULT_LEVELS)
    return schema


def _load_plugins(config: dict[str, Any], source: str) -> None:
    entries = config.get("plugins", [])
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        raise ConfigError(f"{source}: key 'plugins' must be a list of module names or .py paths")
    try:
        plugins.load(entries)
    except ValueError as err:
        raise ConfigError(f"{source}: {err}") from err


def validate_config(config: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Return a validated copy with defaults filled in; raise ConfigError naming the key."""
    _load_plugins(config, source)
    schema = load_schema()
    validator = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    errors = sorted(
        validator.iter_errors(config),
        key=lambda e: (len(e.absolute_path), _key(e.absolute_path)),
    )
    if errors:
        err = errors[0]
        raise ConfigError(
            f"{source}: key '{_key(err.absolute_path)}' breaks the schema rule "
            f"'{err.validator}' ({_key(err.absolute_schema_path)}): {err.message}"
        )
    resolved = copy.deepcopy(config)
    _add_combined_sources(resolved)
    _fill_defaults(schema, resolved, schema)
    _check_modes(resolved, source)
    _check_cross_keys(resolved, source)
    _check_ablations(resolved, source)
    _check_sdm_sets(resolved, source)
    return resolved


def _add_combined_sources(config: dict[str, Any]) -> None:
    """A study with occurrence sources combines them (``sources.occurrences``, mode
    ``combine``) unless the config says how."""
    from bfm import sources
    from bfm.sources.occurrence_base import COMBINED_BY as NAME
    from bfm.sources.occurrence_base import OccurrenceSource

    configured = config.get("sources", {})
    if NAME not in configured and any(
        isinstance(sources.get(s), OccurrenceSource) for s in configured
    ):
        configured[NAME] = {"mode": "combine"}


def _check_modes(config: dict[str, Any], source: str) -> None:
    from bfm import sources

    for name, settings in config["sources"].items():
        combines = sources.get(name).combines
        if combines != (settings["mode"] == "combine"):
            want = "'combine'" if combines else "sample, download or file"
            raise ConfigError(f"{source}: key 'sources.{name}.mode' is {settings['mode']!r}; "
                              f"source {name} takes {want}")  # fmt: skip


def _check_cross_keys(config: dict[str, Any], source: str) -> None:
    try:
        Grid.from_dict(config["grid"])
    except ValueError as err:
        raise ConfigError(f"{source}: key 'grid' is not a valid grid: {err}") from err
    t = config["time"]
    start, end, eval_start = (pd.Timestamp(t[k]) for k in ("start", "end", "eval_start"))
    if not start < end:
        raise ConfigError(
            f"{source}: key 'time.end' ({t['end']}) must lie after time.start ({t['start']})"
        )
    if not start < eval_start <= end:
        raise ConfigError(
            f"{source}: key 'time.eval_start' ({t['eval_start']}) must lie after time.start "
            f"({t['start']}) and not after time.end ({t['end']})"
        )
    starts = batch_starts(t["start"], t["end"], t["step"])
    n_train = int(in_training(starts, eval_start, t["step"]).sum())
    n_eval = len(starts) - n_train
    # Training pairs batch t with batch t + step, so each side needs two batches.
    if n_train < 2 or n_eval < 2:
        raise ConfigError(
            f"{source}: keys 'time.*' give {n_train} training and {n_eval} held-out batches "
            f"at step {t['step']}; each needs at least 2 (widen the window or move eval_start)"
        )


def _check_sdm_sets(config: dict[str, Any], source: str) -> None:
    """Every species of an ``sdm.sets`` entry is modelled (in the subset, else the list)."""
    sets = (config.get("sdm") or {}).get("sets") or {}
    named = [n for members in sets.values() for n in (members or [])]
    if not named:
        return
    modelled = list(config.get("species_subset") or [])
    if not modelled:
        path = Path(config.get("species", ""))
        if not path.is_file():
            return  # the species list's own check names it
        modelled = pd.read_csv(path)["scientific_name"].astype(str).tolist()
    for name, members in sets.items():
        unknown = [n for n in members or [] if n not in modelled]
        if unknown:
            raise ConfigError(
                f"{source}: key 'sdm.sets.{name}' names species that are not modelled: "
                f"{unknown} (the study models {len(modelled)}: species_subset, else the list)"
            )


def _check_ablations(config: dict[str, Any], source: str) -> None:
    """Each of ``evaluation.ablations`` is a variant of this study's model (bfm.ablations)."""
    from bfm.ablations import variants

    try:
        variants(config)
    except ValueError as err:
        raise ConfigError(f"{source}: {err}") from err


def load_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read config ({err})") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the config must be a mapping of keys, got {type(raw).__name__}")
    return validate_config(raw, str(path))


def write_resolved_config(config: dict[str, Any], directory: str | Path) -> str:
    """Write the resolved config to ``<directory>/<config_hash>.yaml`` (once; the content is
    fixed by the name) and return that path. Loading it gives the same config and hash."""
    from bfm.fileio import write_text_atomic
    from bfm.provenance import config_hash

    path = Path(directory) / f"{config_hash(config)}.yaml"
    if not path.is_file():
        header = "# The resolved config of a workflow run (written by workflow/rules/common.smk)\n"
        write_text_atomic(path, header + yaml.safe_dump(config, sort_keys=True))
    return str(path)
