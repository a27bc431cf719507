#!/usr/bin/env bash
# Post-deploy script of every env (<env>.post-deploy.sh links here). Snakemake runs it once,
# inside the env it has just created, from the working directory of the snakemake call.
# It installs the bfm checkout that runs the workflow, editable and without dependencies
# (the env file pins them; setuptools + setuptools-scm in the env build it offline, and
# setuptools-scm takes the version from the checkout's git tags).
set -euo pipefail
src=${BFM_SOURCE_DIR:-$(git rev-parse --show-toplevel 2>/dev/null || true)}
if [ -z "$src" ] || ! grep -qs '^name = "bfm"$' "$src/pyproject.toml"; then
	echo "install-bfm: no bfm checkout at '$src': run snakemake from the repository" \
		"or export BFM_SOURCE_DIR=<repository>" >&2
	exit 1
fi
python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation \
	--editable "$src"
bfm --version
