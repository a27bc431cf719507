"""Per-rule conda envs (envs/*.yaml) provide what each rule's code imports.

Every rule that runs something has `conda:` and `log:`. Its shell calls `bfm <command>`; the
code that runs is `bfm.cli` plus the module that registers the command (bfm.cli.COMMANDS),
followed through bfm's own imports with `ast` (imports inside functions included, those under
`if TYPE_CHECKING:` left out). Every third-party module met, and every I/O backend that xarray
or pandas loads by name (`engine="h5netcdf"`, the netCDF4 default of `xr.open_dataset`), must
be a package of that rule's env. Envs are conda-forge only, every package pinned exactly, and
provide `bfm` itself through `<env>.post-deploy.sh` (-> envs/install-bfm.sh).
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import yaml

from bfm.cli import COMMANDS, command_module
from tests.conftest import ROOT

SRC = ROOT / "src"
# Import name -> conda-forge package, where they differ.
CONDA_PACKAGE = {
    "yaml": "pyyaml",
    "netCDF4": "netcdf4",
    "torch": "pytorch",
    "matplotlib": "matplotlib-base",
    "PIL": "pillow",
    "sklearn": "scikit-learn",
    "cv2": "opencv",
    "ecmwf": "ecmwf-datastores-client",
    "soundfile": "pysoundfile",
}
# I/O backends loaded by name at run time: engine="..." -> module.
ENGINES = {
    "netcdf4": "netCDF4",
    "h5netcdf": "h5netcdf",
    "scipy": "scipy",
    "pyarrow": "pyarrow",
    "fastparquet": "fastparquet",
}
# Calls that load a backend when no engine= is given: xarray's default netCDF engine is
# netCDF4, pandas' default parquet engine is pyarrow.
DEFAULT_ENGINE = {
    "open_dataset": "netCDF4",
    "open_mfdataset": "netCDF4",
    "open_dataarray": "netCDF4",
    "load_dataset": "netCDF4",
    "to_netcdf": "netCDF4",
    "read_parquet": "pyarrow",
    "to_parquet": "pyarrow",
}
# Packages every env has: the interpreter and what installs bfm (envs/*.post-deploy.sh).
BASE_PACKAGES = {"python", "pip", "setuptools", "setuptools-scm"}
# The main Snakemake process's env (no rule uses it); its pip section holds what conda has on
# bioconda only (these envs are conda-forge alone).
WORKFLOW_ENV = ROOT / "envs/snakemake.yaml"
PIP_ONLY = {
    "snakemake",
    "snakemake-executor-plugin-slurm",
    "snakemake-executor-plugin-slurm-jobstep",
}

# Loads the workflow with Snakemake's API in a child process (the Snakefile exports config
# variables into os.environ, which must not leak into this test process).
_RULES_SCRIPT = """
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import OutputSettings, ResourceSettings
with SnakemakeApi(OutputSettings()) as api:
    wf = api.workflow(resource_settings=ResourceSettings(cores=1),
                      snakefile=Path("workflow/Snakefile"), workdir=Path("."))
    rules = [{"name": r.name, "shell": r.shellcmd, "runs": r.is_shell or r.is_script
              or r.is_run or r.is_notebook or r.is_wrapper or r.is_template_engine,
              "conda": r.conda_env, "snakefile": r.snakefile, "log": list(r.log)}
             for r in wf._workflow.rules]
print("RULES=" + json.dumps(rules))
"""


@cache
def workflow_rules() -> list[dict]:
    out = subprocess.run(
        [sys.executable, "-c", _RULES_SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("RULES="))
    return [r for r in json.loads(line.removeprefix("RULES=")) if r["runs"]]


def env_path(rule: dict) -> Path:
    return (Path(rule["snakefile"]).parent / rule["conda"]).resolve()


def bfm_commands(shell: str) -> list[str]:
    """The `bfm <command>` calls in a shell command."""
    return re.findall(r"(?:^|[\s;&|(}])bfm\s+([a-z][\w-]*)", shell)


# --- following imports -------------------------------------------------------------------


def module_file(name: str) -> Path | None:
    base = SRC.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes under `if TYPE_CHECKING:` (never executed)."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skipped


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute module name of ``from ... import`` (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    if module_file(module).name != "__init__.py":  # a plain module: start from its package
        parts = parts[:-1]
    parts = parts[: len(parts) - node.level + 1]
    return ".".join(parts + ([node.module] if node.module else []))


def _engines(tree: ast.AST) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        kw = {k.arg: k.value for k in node.keywords}
        engine = kw.get("engine")
        if isinstance(engine, ast.Constant) and engine.value in ENGINES:
            found.add(ENGINES[engine.value])
        func = (
            node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        )
        if engine is None and func in DEFAULT_ENGINE:
            found.add(DEFAULT_ENGINE[func])
    return found


@cache
def direct_imports(module: str) -> tuple[frozenset[str], frozenset[str]]:
    """(bfm modules, third-party top-level modules) that ``module``'s code imports."""
    path = module_file(module)
    assert path is not None, f"no source for {module}"
    tree = ast.parse(path.read_text(), str(path))
    skipped = _type_checking_nodes(tree)
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, node)
            names.add(base)
            # `from bfm import checkpoint` imports the submodule bfm.checkpoint.
            names.update(f"{base}.{a.name}" for a in node.names if module_file(f"{base}.{a.name}"))
    ours = {n for n in names if n.split(".")[0] == "bfm" and module_file(n)}
    # Importing a.b.c runs a/__init__ and a/b/__init__ first.
    ours |= {".".join(n.split(".")[:i]) for n in ours for i in range(1, n.count(".") + 1)}
    theirs = {n.split(".")[0] for n in names if n and n.split(".")[0] != "bfm"}
    theirs -= set(sys.stdlib_module_names) | {"__future__"}
    return frozenset(ours), frozenset(theirs | _engines(tree))


def third_party_closure(start: list[str]) -> dict[str, set[str]]:
    """Third-party module -> the bfm modules that import it, over everything ``start`` imports."""
    seen, todo, needs = set(), list(start), {}
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        ours, theirs = direct_imports(module)
        todo.extend(ours)
        for name in theirs:
            needs.setdefault(name, set()).add(module)
    return needs


def modules_run_by(shell: str) -> list[str]:
    commands = bfm_commands(shell)
    return ["bfm", "bfm.cli", *(command_module(c)[0] for c in commands)]


# --- env files ---------------------------------------------------------------------------


def load_env(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def env_packages(env: dict) -> dict[str, str]:
    """package -> pinned spec, conda and pip sections together (names normalised)."""
    out = {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            for spec in dep["pip"]:
                name = re.split(r"[=<>!~\[ ]", spec, maxsplit=1)[0]
                out[name.lower().replace("_", "-")] = spec
        else:
            out[re.split(r"[=<>!~ ]", dep, maxsplit=1)[0].lower()] = dep
    return out


def used_envs() -> dict[Path, list[str]]:
    envs: dict[Path, list[str]] = {}
    for rule in workflow_rules():
        if rule["conda"]:
            envs.setdefault(env_path(rule), []).append(rule["name"])
    return envs


# --- tests -------------------------------------------------------------------------------


def test_every_rule_has_conda_and_log_and_calls_one_bfm_command():
    rules = workflow_rules()
    assert len(rules) >= 10, [r["name"] for r in rules]
    for rule in rules:
        assert rule["conda"], f"rule {rule['name']} has no conda: directive"
        assert env_path(rule).is_file(), f"rule {rule['name']}: {env_path(rule)} is missing"
        assert rule["log"], f"rule {rule['name']} has no log: directive"
        commands = bfm_commands(rule["shell"] or "")
        assert len(commands) == 1, (
            f"rule {rule['name']} should call one bfm command: {rule['shell']!r}"
        )
        assert commands[0] in COMMANDS, f"rule {rule['name']}: unknown bfm command {commands}"


def test_rule_envs_provide_every_module_their_code_imports():
    missing = {}
    for rule in workflow_rules():
        provided = env_packages(load_env(env_path(rule)))
        needs = third_party_closure(modules_run_by(rule["shell"]))
        lacking = {
            CONDA_PACKAGE.get(m, m.lower()): sorted(by)
            for m, by in needs.items()
            if CONDA_PACKAGE.get(m, m.lower()) not in provided
        }
        if lacking:
            missing[f"{rule['name']} ({env_path(rule).name})"] = lacking
    assert not missing, f"rules whose env lacks a package (package: imported by): {missing}"


def test_envs_are_small_pinned_conda_forge_envs_with_a_bfm_installer():
    envs = used_envs()
    assert {p.name for p in envs} >= {"sources.yaml", "geo.yaml", "train.yaml", "report.yaml"}
    for path in sorted(ROOT.joinpath("envs").glob("*.yaml")):
        env = load_env(path)
        assert env["channels"] == ["conda-forge", "nodefaults"], path.name
        packages = env_packages(env)
        assert BASE_PACKAGES <= set(packages), (path.name, BASE_PACKAGES - set(packages))
        pip = {name for name, spec in packages.items() if "==" in spec}
        for name, spec in packages.items():
            if name in pip:
                assert re.fullmatch(r"[\w.-]+==\d[\w.]*", spec), f"{path.name}: {spec!r}"
            else:  # conda: name=version[=build]
                assert re.fullmatch(rf"{re.escape(name)}=\d[\w.]*(=\S+)?", spec), (
                    f"{path.name}: {spec!r} is not pinned to one version"
                )
        if path == WORKFLOW_ENV:  # bfm is installed by hand there (profiles/snellius/README.md)
            assert pip == PIP_ONLY, pip
            continue
        assert path in envs, f"{path.name} is used by no rule"
        assert not pip, f"{path.name}: pip only for what conda-forge lacks: {pip}"
        deploy = path.with_suffix(".post-deploy.sh")
        assert deploy.is_file(), f"{deploy.name} missing: the env would lack bfm"
        assert "pip install" in deploy.read_text() and "--no-deps" in deploy.read_text()


def test_env_pins_match_the_tested_venv():
    """The envs pin the versions the test suite runs with (where the venv has the package)."""
    from importlib.metadata import PackageNotFoundError, version

    pypi_name = {
        "pytorch": "torch",
        "matplotlib-base": "matplotlib",
        "netcdf4": "netCDF4",
        "pyyaml": "PyYAML",
    }
    for path in sorted(ROOT.joinpath("envs").glob("*.yaml")):
        for name, spec in env_packages(load_env(path)).items():
            if name in BASE_PACKAGES:  # build tools, not what the code runs with
                continue
            pinned = re.match(r"[\w.-]+==?([^=\s]+)", spec).group(1)
            try:
                installed = version(pypi_name.get(name, name))
            except PackageNotFoundError:
                continue
            # PyPI-only suffixes: +cpu (torch wheel flavour), .postN (wheel rebuilds).
            installed = re.sub(r"(\+\w+|\.post\d+)$", "", installed)
            assert pinned == installed, f"{path.name}: {spec} but the venv has {installed}"


_PARSE_SCRIPT = _RULES_SCRIPT.replace(
    'print("RULES=" + json.dumps(rules))',
    'print("MODULES=" + json.dumps(sorted(sys.modules)))',
)


def top_level_imports(module: str) -> set[str]:
    """Third-party top-level modules that ``module`` imports when it is imported (its
    module-level statements; not function bodies, not ``if TYPE_CHECKING:``)."""
    tree = ast.parse(module_file(module).read_text())
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for sub in ast.walk(node) if isinstance(node, ast.Import | ast.ImportFrom) else []:
            if isinstance(sub, ast.Import):
                names.update(a.name.split(".")[0] for a in sub.names)
            elif isinstance(sub, ast.ImportFrom) and not sub.level and sub.module:
                names.add(sub.module.split(".")[0])
    return names - {"bfm", "__future__"} - set(sys.stdlib_module_names)


def _requirements_of(names: set[str]) -> set[str]:
    """The distributions ``names`` may use, transitively, extras included (installed ones
    import their optional dependencies when present)."""
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        todo += [
            re.split(r"[\s;<>=!~\[(]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requires
        ]
    return seen


def test_workflow_env_provides_what_the_snakefile_imports():
    """Parsing the workflow (in the main Snakemake process and in every SLURM job) imports
    bfm.config, bfm.workflow, the catalogue and the sources' registry: their imports are in
    envs/snakemake.yaml, and heavy libraries (xarray, torch, ...) stay out of the parse."""
    out = subprocess.run(
        [sys.executable, "-c", _PARSE_SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("MODULES="))
    loaded = json.loads(line.removeprefix("MODULES="))
    top = {m.split(".")[0] for m in loaded}
    for heavy in ("xarray", "torch", "deepspeed", "netCDF4", "h5py", "matplotlib"):
        assert heavy not in top, f"parsing the workflow imports {heavy}"
    provided = env_packages(load_env(WORKFLOW_ENV))
    ours = {m for m in loaded if m.split(".")[0] == "bfm" and module_file(m)}
    assert "bfm.workflow" in ours and "bfm.sources.era5" in ours
    needs = {CONDA_PACKAGE.get(m, m.lower()) for o in ours for m in top_level_imports(o)}
    assert needs <= set(provided), f"{WORKFLOW_ENV.name} lacks {sorted(needs - set(provided))}"
    # Everything else that got imported comes with what the env provides.
    allowed = _requirements_of(set(provided) | PIP_ONLY | {"pyyaml"})
    distributions = importlib.metadata.packages_distributions()
    others = {
        d.lower().replace("_", "-")
        for m in top - set(sys.stdlib_module_names) - {"bfm"}
        for d in distributions.get(m, [])
    }
    assert others <= allowed | set(provided), sorted(others - allowed - set(provided))


def test_import_walker(tmp_path, monkeypatch):
    """The walker on a made-up package: relative, lazy and TYPE_CHECKING imports, backends."""
    files = {
        "bfm/__init__.py": "",
        "bfm/a.py": "from typing import TYPE_CHECKING\nimport numpy as np\nfrom . import b\n"
        "if TYPE_CHECKING:\n    import torch\n",
        "bfm/b.py": "def f():\n    import deepspeed\n    import xarray as xr\n"
        "    return xr.open_dataset('x')\n",
        "bfm/sub/__init__.py": "from .c import g\n",
        "bfm/sub/c.py": "import json\n\ndef g(ds):\n    ds.to_netcdf('y', engine='h5netcdf')\n",
    }
    for name, text in files.items():
        tmp_path.joinpath(name).parent.mkdir(parents=True, exist_ok=True)
        tmp_path.joinpath(name).write_text(text)
    monkeypatch.setattr(sys.modules[__name__], "SRC", tmp_path)
    direct_imports.cache_clear()
    try:
        needs = third_party_closure(["bfm.a", "bfm.sub"])
    finally:
        direct_imports.cache_clear()
    assert needs == {
        "numpy": {"bfm.a"},
        "deepspeed": {"bfm.b"},
        "xarray": {"bfm.b"},
        "netCDF4": {"bfm.b"},  # xarray's default engine
        "h5netcdf": {"bfm.sub.c"},
    }


# --- pin files (envs/<env>.pin.txt, written by envs/pins.py) ------------------------------


def read_pins(path: Path) -> tuple[dict[str, tuple[str, str | None]], dict[str, str]]:
    """(conda package -> (version, build or None), pip package -> version) of a pin file."""
    conda, pip = {}, {}
    for line in path.read_text().splitlines():
        if m := re.fullmatch(r"# pip: ([\w.-]+)==(\S+)", line):
            pip[m.group(1).lower()] = m.group(2)
        elif line and not line.startswith("#"):
            m = re.fullmatch(r"([\w.-]+)=(\d[^=\s]*)(?:=(\S+))?", line)
            assert m, f"{path.name}: {line!r} is not name=version[=build]"
            conda[m.group(1)] = (m.group(2), m.group(3))
    return conda, pip


def test_every_env_package_has_a_pin_that_agrees_with_the_yaml():
    envs = sorted(ROOT.joinpath("envs").glob("*.yaml"))
    assert len(envs) >= 5
    for path in envs:
        pin_file = path.with_suffix(".pin.txt")
        assert pin_file.is_file(), f"{pin_file.name} missing: python envs/pins.py writes it"
        pins, pip_pins = read_pins(pin_file)
        for name, spec in env_packages(load_env(path)).items():
            if "==" in spec:  # pip section
                assert pip_pins.get(name) == spec.split("==")[1], (pin_file.name, spec)
                continue
            _, version, *build = spec.split("=")
            assert name in pins, f"{pin_file.name} has no pin for {name} ({path.name}: {spec})"
            assert pins[name][0] == version, f"{pin_file.name}: {pins[name]} but {spec}"
            assert pins[name][1] == (build[0] if build else None), (pin_file.name, spec)
        # The Python packages pulled in on top: the versions the tests ran with.
        for name, (version, _) in pins.items():
            pypi = {v: k for k, v in PYPI_FOR_PIN.items()}.get(name, name)
            try:
                installed = importlib.metadata.version(pypi)
            except importlib.metadata.PackageNotFoundError:
                continue
            installed = re.sub(r"(\+\w+|\.post\d+)$", "", installed)
            if name not in BASE_PACKAGES:
                assert version == installed, f"{pin_file.name}: {name}={version}, venv {installed}"


# conda-forge -> PyPI names in the pin files (envs/pins.py CONDA_NAME, inverted).
PYPI_FOR_PIN = {
    "torch": "pytorch",
    "matplotlib": "matplotlib-base",
    "soundfile": "pysoundfile",
    "typing-extensions": "typing_extensions",
    "tzdata": "python-tzdata",
    "msgpack": "msgpack-python",
    "huggingface-hub": "huggingface_hub",
}


def test_pin_files_are_up_to_date():
    out = subprocess.run(
        [sys.executable, str(ROOT / "envs/pins.py"), "--check"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr


def test_train_env_is_cuda_builds_for_one_cuda_version():
    packages = env_packages(load_env(ROOT / "envs/train.yaml"))
    assert re.fullmatch(r"cuda-version=12\.\d+", packages["cuda-version"]), packages
    assert packages["pytorch"].endswith("=cuda*") and packages["deepspeed"].endswith("=cuda*")
