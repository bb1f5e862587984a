#!/usr/bin/env bash
# Fill .device/ (git-ignored) with what the GPU checks need on the device tool's machine
# (nvidia-h200: Python 3.12 with torch, no registry): wheels of topiary's runtime
# dependencies that its image lacks, at the versions this .venv holds, and Fashion-MNIST's
# four IDX files. Run here, from the repository root, then `run` checks.sh there:
#
#   bash bench/device/bundle.sh
#   run(command="bash bench/device/checks.sh all", carry=[".device"], timeout_s=480)
#
# The working tree travels with .device, 64 MiB in all; this prints the total.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
FASHION_MNIST=${FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
# The checks keep their database in SQLite: no PostgreSQL driver (4.6 MB) travels.
SKIP=(psycopg psycopg-binary)
rm -rf .device && mkdir -p .device/whl .device/fashion-mnist
for requirement in $("$PY" bench/device/carry_list.py --skip "${SKIP[@]}"); do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d .device/whl "$requirement" 2>&1 | grep -v '^WARNING' || true
  ls .device/whl | grep -qi "^$(echo "${requirement%%==*}" | tr -- '-' '_')-" \
    || { echo "no Python 3.12 wheel of $requirement" >&2; exit 1; }
done
for name in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte \
            t10k-labels-idx1-ubyte; do
  cp "$FASHION_MNIST/$name.gz" .device/fashion-mnist/ 2>/dev/null \
    || { echo "no $FASHION_MNIST/$name.gz (apt-get install dataset-fashion-mnist)" >&2; exit 1; }
done
tracked=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
untracked=$(git ls-files -z --others --exclude-standard | xargs -0 -r du -cb | tail -1 | cut -f1)
carried=$(du -sb .device | cut -f1)
echo "wheels: $(ls .device/whl | wc -l), $(du -sh .device/whl | cut -f1); data $(du -sh .device/fashion-mnist | cut -f1)"
echo "travels: $(( (tracked + ${untracked:-0} + carried) / 1048576 )) MiB of 64"
