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
    assert spec is not None and spec.loader is not None  # a .py path always has a loader
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
        try:
            if entry.endswith(".py"):
                modules.append(_from_file(path.resolve()))
            else:
                modules.append(importlib.import_module(entry))
        except Exception as err:  # a plugin's own error: name the entry, no traceback
            raise ValueError(
                f"config: key 'plugins': cannot import {entry!r} ({type(err).__name__}: {err})"
            ) from err
    return modules
