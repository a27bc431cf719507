#!/usr/bin/env bash
# Wall time of the offline demo DAG (target: <= 10 minutes on 2 cores), from nothing, in a
# temporary working directory. Usage: bash benchmarks/demo_dag.sh [CORES]   (inside the venv)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cores=${1:-2}
work=$(mktemp -d /tmp/bfm-demo-bench.XXXX)
trap 'rm -rf "$work"' EXIT
cp -r "$root/config" "$root/resources" "$work/"
start=$(date +%s%N)
snakemake -s "$root/workflow/Snakefile" -d "$work" --cores "$cores" --quiet all >/dev/null
end=$(date +%s%N)
files=$(find "$work/results" -type f \( -name '*.nc' -o -name '*.h5' -o -name '*.json' \
    -o -name '*.jsonl' -o -name '*.svg' -o -name '*.html' -o -name '*.zip' \) | wc -l)
ms=$(((end - start) / 1000000))
printf 'demo DAG: %d.%03d s wall on %s cores (%s output files)\n' $((ms / 1000)) $((ms % 1000)) \
    "$cores" "$files"
