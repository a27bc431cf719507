"""Plugins: modules that register more sources and modalities (config key ``plugins``).

An entry is a module name importable from ``sys.path`` (``mypackage.ndvi``) or the path of a
``.py`` file, relative to the working directory (``workflow/plugins/toy.py``). Importing it
runs its ``catalogue.register(...)`` and ``sources.register(...)`` calls; loading the same
entry twice is a no-op.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType


def _from_file(path: Path) -> ModuleType:
    name = f"bfm_plugin_{path.stem}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"plugins: {path} is not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def load(entries: Iterable[str]) -> list[ModuleType]:
    """Import every plugin entry; ValueError names an entry that cannot be found."""
    import bfm.sources  # noqa: F401  (the built-in sources register first)

    modules = []
    for entry in entries:
        if entry.endswith(".py"):
            path = Path(entry)
            if not path.is_file():
                raise ValueError(
                    f"config: key 'plugins': {entry} is not a file (paths are "
                    f"relative to the working directory {Path.cwd()})"
                )
            modules.append(_from_file(path.resolve()))
            continue
        try:
            modules.append(importlib.import_module(entry))
        except ModuleNotFoundError as err:
            raise ValueError(f"config: key 'plugins': cannot import {entry!r} ({err})") from err
    return modules
