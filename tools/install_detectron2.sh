#!/usr/bin/env bash
# Installs Detectron2 at the commit the project pins into a venv that already has torch.
#
#   tools/install_detectron2.sh PYTHON COMMIT STAMP
#
# Source, in this order: $DETECTRON2_SRC (a source folder or a source archive of that commit),
# else the official git repository at COMMIT. Detectron2 builds a C++/CUDA extension against the
# installed torch, so it needs a compiler and no build isolation (an isolated build would pull a
# second torch); its model_zoo imports pkg_resources, which setuptools 81 removed.
#
# On success it touches STAMP (the Makefile's record that this commit is installed). Where it
# cannot be built, it says why and how to fix it, records the reason in
# $VENV/detectron2-unavailable.txt (the tests show it as their skip reason) and exits 0, so the
# rest of the project still installs. Under CI=true a missing Detectron2 is a failure (exit 1).
set -uo pipefail

PY=$1
COMMIT=$2
STAMP=$3
VENV=$(dirname "$(dirname "$PY")")
REASON_FILE=$VENV/detectron2-unavailable.txt
LOG=$VENV/detectron2-build.log
GIT_URL="git+https://github.com/facebookresearch/detectron2.git@$COMMIT"

unavailable() {
    local why=$1
    {
        echo "Detectron2 is not installed: $why"
        echo "Everything else is installed; the detection stage (tools/train_net.py, the demo's"
        echo "detection steps) and the tests that need Detectron2 are skipped until it is."
        echo "To fix: install a C/C++ compiler (e.g. apt install g++) and make sure the source is"
        echo "reachable, either $GIT_URL"
        echo "or a local copy of that commit: DETECTRON2_SRC=/path/to/detectron2 (a clone checked"
        echo "out at $COMMIT, or its source archive), then run 'make venv' again."
    } | tee "$REASON_FILE" >&2
    if [ "${CI:-}" = "true" ]; then
        echo "error: CI=true and Detectron2 could not be installed (see above)" >&2
        exit 1
    fi
    exit 0
}

if [ -n "${DETECTRON2_SRC:-}" ]; then
    SRC=$DETECTRON2_SRC
    [ -e "$SRC" ] || unavailable "DETECTRON2_SRC=$SRC does not exist."
else
    SRC=$GIT_URL
fi

if ! command -v "${CXX:-c++}" >/dev/null 2>&1; then
    unavailable "no C++ compiler found (${CXX:-c++}); Detectron2 compiles an extension."
fi

echo "Building Detectron2 $COMMIT from $SRC (a few minutes; log: $LOG)"
if ! "$PY" -m pip install --quiet 'setuptools<81' wheel >"$LOG" 2>&1; then
    unavailable "could not install its build requirements 'setuptools<81' and wheel (log: $LOG)."
fi
if ! "$PY" -m pip install --no-build-isolation --use-pep517 "$SRC" >>"$LOG" 2>&1; then
    tail -n 15 "$LOG" >&2
    unavailable "pip could not build it from $SRC (last lines above; full log: $LOG)."
fi
if ! "$PY" -c "import detectron2, detectron2._C" >>"$LOG" 2>&1; then
    tail -n 5 "$LOG" >&2
    unavailable "it was built but does not import (log: $LOG)."
fi
rm -f "$REASON_FILE" "$VENV"/.detectron2-*
touch "$STAMP"
echo "Detectron2 $COMMIT installed."
