#!/usr/bin/env bash
# The GPU checks of the open issues, as one prepared script for the device tool's machine
# (nvidia-h200: Python 3.12 with torch, nothing to download). Prepare here with
# `bash bench/device/bundle.sh`, then:
#
#   run(command="bash bench/device/checks.sh all", carry=[".device"], timeout_s=480)
#
# Steps (each also alone: smoke, data, search):
#   smoke   wheels installed, Fashion-MNIST in place, every package of ours imported, the
#           GPU seen by torch; a failure here ends the run at once (a cheap rerun)
#   data    issue 16: resnet50 at 224 from JPEGs, the default loader against tensors in
#           GPU memory (bench/data.py --gpu), at most DATA_S seconds
#   search  issue 18: bench/search_quality.py --profile gpu with whatever time is left
#           of BUDGET_S; it starts no unit in its last SEARCH_TAIL_S seconds, and its
#           table is made from the units that finished (SEARCH_PROFILE and SEARCH_ARGS
#           pick another profile and rows: a CPU rehearsal of the step)
# Everything printed, and the tables and JSON, land in $OUT (what the tool sends back).
set -uo pipefail
cd "$(dirname "$0")/../.."
STEP=${1:-all}
OUT=${OUT:-/tmp/topiary-device-out}
BUDGET_S=${BUDGET_S:-450}
DATA_S=${DATA_S:-120}
SEARCH_TAIL_S=${SEARCH_TAIL_S:-100}
PYTHON=${PYTHON:-python3}
SEARCH_PROFILE=${SEARCH_PROFILE:-gpu}
SEARCH_ARGS=${SEARCH_ARGS:-}
STARTED=$SECONDS
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOPIARY_LOG_LEVEL=WARNING

left() { echo $(( BUDGET_S - (SECONDS - STARTED) )); }

smoke() {
  echo "== smoke ($(date -u +%H:%M:%S))"
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/topiary-site .device/whl/*.whl || return 1
  export PYTHONPATH=/tmp/topiary-site:$PWD
  if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    mkdir -p /usr/share/datasets/fashion-mnist \
      && cp .device/fashion-mnist/*.gz /usr/share/datasets/fashion-mnist/ || return 1
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  "$PYTHON" - <<'PY' || return 1
import importlib, os, pkgutil, sys
import torch
# Every module of ours, but those of optional runtimes the image lacks (openvino).
missing = []
for package in ("core", "models", "search", "workers", "service", "cli"):
    for info in pkgutil.walk_packages(importlib.import_module(package).__path__, f"{package}."):
        if info.name.startswith("service.migrations.") or info.name.endswith("__main__"):
            continue  # Alembic's scripts and entry points run only as programs
        try:
            importlib.import_module(info.name)
        except ModuleNotFoundError as error:
            if error.name not in ("openvino",):
                raise
            missing.append(f"{info.name} ({error.name})")
sys.path.insert(0, "bench")
for name in ("_search_rows", "_search_oneshot", "_search_report", "data", "search_quality"):
    importlib.import_module(name)
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, "
      f"cuda {torch.cuda.is_available()}"
      + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "")
      + (f"; not imported: {', '.join(missing)}" if missing else ""))
if not torch.cuda.is_available() and not os.environ.get("ALLOW_CPU"):
    sys.exit("torch sees no GPU")
PY
}

data() {
  echo "== data: bench/data.py --gpu ($(date -u +%H:%M:%S), at most ${DATA_S} s)"
  timeout -k 10 "$DATA_S" "$PYTHON" bench/data.py --gpu | tee "$OUT/data_gpu.md"
  echo "data exit ${PIPESTATUS[0]}"
}

search() {
  local seconds minutes results=bench/out/search_quality_$SEARCH_PROFILE
  seconds=$(left)
  echo "== search: bench/search_quality.py --profile $SEARCH_PROFILE $SEARCH_ARGS" \
       "($(date -u +%H:%M:%S), ${seconds} s left)"
  if (( seconds < SEARCH_TAIL_S + 120 )); then echo "too little time left"; return 1; fi
  minutes=$(awk "BEGIN { print ($seconds - $SEARCH_TAIL_S) / 60 }")
  # shellcheck disable=SC2086  # SEARCH_ARGS is a list of arguments
  timeout -k 10 "$(( seconds - 15 ))" "$PYTHON" bench/search_quality.py \
    --profile "$SEARCH_PROFILE" --deadline-minutes "$minutes" $SEARCH_ARGS
  echo "search exit $?"
  # A run cut by the timeout still left the units that finished in its JSON.
  [ -f "$results.json" ] || return 1
  # shellcheck disable=SC2086
  timeout 60 "$PYTHON" bench/search_quality.py --profile "$SEARCH_PROFILE" --report-only \
    $SEARCH_ARGS > /dev/null
  cp "$results.json" "$results.md" "$OUT/"
}

main() {
  case "$STEP" in
    smoke) smoke ;;
    data) smoke && data ;;
    search) smoke && search ;;
    all) smoke && { data; search; } ;;
    *) echo "usage: checks.sh smoke|data|search|all" >&2; return 2 ;;
  esac
  local status=$?
  echo "== done in $(( SECONDS - STARTED )) s, exit $status"
  return $status
}

main 2>&1 | tee -a "$OUT/checks.log"
exit "${PIPESTATUS[0]}"
