# The two commands a newcomer needs (README.md): `make demo` and `make test`.
# Both create the virtualenv .venv and install the project on first use.
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed-stamp
CORES ?= 2

.PHONY: demo test install clean-results

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned: a range admitting newer releases pulls a multi-GB CUDA build.
	$(VENV)/bin/pip install --disable-pip-version-check -q torch==2.13.0
	$(VENV)/bin/pip install --disable-pip-version-check -q -e '.[test]'
	touch $@

# The offline demo DAG (sample sources -> tiles -> batches -> stats -> training and its
# ablations -> evaluation, species distribution models, forecast), then the Snakemake report.
demo: $(STAMP)
	. $(VENV)/bin/activate && snakemake --cores $(CORES) && snakemake --report report.zip
	@echo "demo done: results/ and report.zip"

test: $(STAMP)
	. $(VENV)/bin/activate && python -m pytest

clean-results:
	rm -rf results logs .snakemake report.zip
