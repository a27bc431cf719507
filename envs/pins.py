"""Write envs/<env>.pin.txt: every package of envs/<env>.yaml at its exact version, plus the Python
packages they depend on at the versions the test venv runs with (conda-forge names).

Why not a real lock: conda-forge cannot be reached where the tests run, so no solver runs here.
These files record the solve the tests stand for; the lock with build strings, URLs and
hashes (including the non-Python libraries: HDF5, netCDF-C, NCCL, the CUDA runtime, which
the venv's wheels bundle) is made on Snellius with conda-lock (profiles/snellius/README.md,
"Lock files"), where conda-forge is reachable.

Format (what ``conda create --file`` reads): ``name=version`` or ``name=version=build`` (a
build glob only where the yaml fixes one: ``pytorch=2.13.0=cuda*``), one a line, sorted;
``#`` comments. Packages the yaml installs with pip (envs/snakemake.yaml: Snakemake and its
plugins are not on conda-forge) and the Python packages only they pull in are listed as
``# pip: name==version`` lines, which conda ignores.

Usage: ``python envs/pins.py`` (rewrite every pin file) or ``python envs/pins.py --check``
(exit 1 naming the files that differ). tests/test_envs.py checks that every package of each
yaml has a pin that agrees with it.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import re
import sys
from pathlib import Path

import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement

ENVS = Path(__file__).resolve().parent
# PyPI distribution -> conda-forge package, where the names differ.
CONDA_NAME = {
    "torch": "pytorch",
    "matplotlib": "matplotlib-base",
    "netcdf4": "netcdf4",
    "pyyaml": "pyyaml",
    "soundfile": "pysoundfile",
    "typing-extensions": "typing_extensions",
    "tzdata": "python-tzdata",
    "msgpack": "msgpack-python",
    "huggingface-hub": "huggingface_hub",
}
PYPI_NAME = {conda: pypi for pypi, conda in CONDA_NAME.items()}
# PyPI-only suffixes of the venv's versions: +cpu (torch wheel flavour), .postN (rebuilds).
WHEEL_SUFFIX = re.compile(r"(\+\w+|\.post\d+)$")
HEADER = """\
# Pins of envs/{env}.yaml: its packages at their exact versions and the Python packages they
# depend on, at the versions the tests run with (conda-forge names). Written by
# `python envs/pins.py` from the test venv; not a solver's lock (no build strings, URLs or
# hashes, no non-Python libraries): make that on Snellius with conda-lock
# (profiles/snellius/README.md, "Lock files"). `conda create --file` reads this format.
"""


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def yaml_specs(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(conda package -> spec, pip package -> spec) of an env file."""
    conda, pip = {}, {}
    for dep in yaml.safe_load(path.read_text())["dependencies"]:
        if isinstance(dep, dict):
            for spec in dep["pip"]:
                pip[normalise(re.split(r"[=<>!~\[ ]", spec, maxsplit=1)[0])] = spec
        else:
            conda[re.split(r"[=<>!~ ]", dep, maxsplit=1)[0].lower()] = dep
    return conda, pip


def venv_version(conda_name: str) -> str | None:
    try:
        version = md.version(PYPI_NAME.get(conda_name, conda_name))
    except md.PackageNotFoundError:
        return None
    return WHEEL_SUFFIX.sub("", version)


def requirements(pypi_name: str) -> list[str]:
    """The distributions ``pypi_name`` needs on Linux (no extras), from the venv's metadata."""
    try:
        requires = md.requires(pypi_name) or []
    except md.PackageNotFoundError:
        return []
    env = {str(k): str(v) for k, v in default_environment().items()}
    env.update(sys_platform="linux", platform_system="Linux", extra="")
    out = []
    for text in requires:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate(env):
            out.append(normalise(req.name))
    return out


def closure(names: list[str]) -> set[str]:
    """PyPI names of ``names`` and everything they need, transitively (those in the venv)."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += requirements(name)
    return seen


def pin_text(path: Path) -> str:
    """The pin file of env file ``path``."""
    conda, pip = yaml_specs(path)
    lines = {name: spec for name, spec in conda.items()}  # exact already (test_envs checks)
    direct = [normalise(PYPI_NAME.get(n, n)) for n in conda]
    for pypi in sorted(closure(direct)):
        name = CONDA_NAME.get(pypi, pypi)
        version = venv_version(name)
        if name not in lines and version is not None:
            lines[name] = f"{name}={version}"
    pip_lines = dict(pip)
    for pypi in sorted(closure(list(pip))):
        version = venv_version(pypi)
        if pypi not in pip_lines and CONDA_NAME.get(pypi, pypi) not in lines and version:
            pip_lines[pypi] = f"{pypi}=={version}"
    body = [lines[n] for n in sorted(lines)]
    body += [f"# pip: {pip_lines[n]}" for n in sorted(pip_lines)]
    return HEADER.format(env=path.stem) + "\n".join(body) + "\n"


def pin_path(path: Path) -> Path:
    return path.with_suffix(".pin.txt")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if stale")
    args = parser.parse_args(argv)
    stale = []
    for path in sorted(ENVS.glob("*.yaml")):
        text = pin_text(path)
        target = pin_path(path)
        if args.check:
            if not target.is_file() or target.read_text() != text:
                stale.append(target.name)
        else:
            target.write_text(text)
    if stale:
        print(f"stale pin files (run python envs/pins.py): {', '.join(stale)}", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
