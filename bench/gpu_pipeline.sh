#!/usr/bin/env bash
# The embedded default's stages, in dvc.yaml's order, on a bare GPU box that has torch but neither DVC
# nor Great Expectations (the lent benchmark machines). On a full install, `dvc repro` is the way: this
# script exists to measure the GPU path of the very same stage modules.
#
#   PYTHONPATH=src bash bench/gpu_pipeline.sh OUT_DIR
#
# `validate` is replaced by writing the manifests directly (build_manifest, the function the validate
# stage calls before its suite); every other stage runs its own module (dacs_uda.stages.<stage>, as in
# dvc.yaml). OUT_DIR receives the metrics
# files and times.tsv (stage, seconds).
set -euo pipefail
out=${1:?usage: bench/gpu_pipeline.sh OUT_DIR}
py=${PYTHON:-python3}
mkdir -p "$out"
printf 'stage\tseconds\n' >"$out/times.tsv"

stage() {
  local name=$1 start
  shift
  start=$EPOCHREALTIME
  "$@"
  awk -v n="$name" -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%s\t%.1f\n", n, b - a }' >>"$out/times.tsv"
}

write_manifests() {
  "$py" - <<'EOF'
from pathlib import Path

from dacs_uda.config import load_params
from dacs_uda.data.manifest import build_manifest

params = load_params()
folder = Path(params.data.manifests)
folder.mkdir(parents=True, exist_ok=True)
for name in ("source", "target"):
    domain = getattr(params.data, name)
    manifest = build_manifest(domain.format, Path(domain.root), workers=8)
    bad = manifest[manifest["error"] != ""]
    if len(bad):
        raise SystemExit(f"{name}: {len(bad)} bad rows, first: {bad.iloc[0].to_dict()}")
    manifest.to_csv(folder / f"{name}.csv", index=False)
EOF
}

stage data "$py" -m dacs_uda.stages.data
stage manifests write_manifests
stage prepare "$py" -m dacs_uda.stages.prepare
stage pretrain "$py" -m dacs_uda.stages.pretrain --section pretrain
stage oracle "$py" -m dacs_uda.stages.pretrain --section oracle
stage adapt "$py" -m dacs_uda.stages.adapt
stage evaluate "$py" -m dacs_uda.stages.evaluate
stage export "$py" -m dacs_uda.stages.export
stage evaluate_onnx "$py" -m dacs_uda.stages.evaluate_onnx
cp metrics/*.json "$out"/
