#!/usr/bin/env bash
# Build CPU-only Caffe with pycaffe (PyPI sdist brocolli-caffe 9.0.2) and install it into a venv.
#
# Usage: scripts/install_caffe.sh [VENV]
#   VENV defaults to $VIRTUAL_ENV, then to .venv at the repository root.
#   CAFFE_BUILD_JOBS sets the number of parallel compile jobs (default 2).
#
# Needs Debian 12 with root (apt-get) and access to PyPI. The sdist as published does not build
# there: its setup.py requires conda and Python 3.7-3.9, it links boost_python (Debian ships
# boost_python311) and it ships a caffe_pb2.py that protobuf 4 and later reject. The patches in
# scripts/caffe/ fix the build, and protoc regenerates caffe_pb2.py.
#
# Downloads, sources and build logs go to build/caffe/. A second run finds the working install
# and exits before touching apt or pip.
set -Eeuo pipefail

readonly CAFFE_DIST=brocolli-caffe
readonly CAFFE_VERSION=9.0.2
readonly SDIST_SHA256=c6410cc60bdd6db685d441b66be7df05410f8850ac88d6b75d48ef9b2315c08a
# Python packages that `import caffe` needs (caffe/io.py imports skimage, pycaffe.py imports six).
readonly PY_DEPS=(scikit-image==0.26.0 six==1.17.0)
# Packages that installing PY_DEPS must not install or change, because other tools pin them in the venv.
readonly PROTECTED_PACKAGES="numpy protobuf torch torchvision onnx onnxruntime"
readonly APT_PACKAGES=(
    build-essential cmake patch
    protobuf-compiler libprotobuf-dev
    libboost-thread-dev libboost-system-dev libboost-filesystem-dev libboost-regex-dev
    libboost-python-dev
    libgoogle-glog-dev libgflags-dev libhdf5-dev libopenblas-dev libgtest-dev
)

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO_ROOT
readonly PATCH_DIR=$REPO_ROOT/scripts/caffe
readonly BUILD_DIR=$REPO_ROOT/build/caffe
readonly SRC_DIR=$BUILD_DIR/src
readonly LOG_DIR=$BUILD_DIR/logs
readonly SDIST=$BUILD_DIR/$CAFFE_DIST-$CAFFE_VERSION.tar.gz

VENV=${1:-${VIRTUAL_ENV:-$REPO_ROOT/.venv}}
VENV=$(cd "$VENV" 2>/dev/null && pwd) || {
    echo "install_caffe: venv not found: ${1:-${VIRTUAL_ENV:-$REPO_ROOT/.venv}}. Create it first or pass its path." >&2
    exit 1
}
readonly VENV
readonly PY=$VENV/bin/python

STEP="start"
STEP_LOG=""

step() {
    STEP=$1
    STEP_LOG=""
    echo "install_caffe: $STEP"
}

on_error() {
    local status=$?
    echo "install_caffe: FAILED at step '$STEP' (exit status $status)" >&2
    if [[ -n $STEP_LOG && -f $STEP_LOG ]]; then
        echo "install_caffe: last lines of $STEP_LOG:" >&2
        tail -n 30 "$STEP_LOG" >&2
    fi
}
trap on_error ERR

# Run a command with its output in $LOG_DIR/NAME.log, so that the console shows one line per step.
run_logged() {
    local name=$1
    shift
    STEP_LOG=$LOG_DIR/$name.log
    "$@" >"$STEP_LOG" 2>&1
}

# Exit status 0 when the venv imports caffe and carries the expected distribution version.
# Runs in /tmp so that the source tree under build/ cannot shadow the installed package.
caffe_installed() {
    (cd /tmp && GLOG_minloglevel=2 "$PY" - "$CAFFE_DIST" "$CAFFE_VERSION" >/dev/null 2>&1) <<'EOF'
import importlib.metadata
import sys

import caffe

installed = importlib.metadata.version(sys.argv[1])
if installed != sys.argv[2]:
    sys.exit(f"{sys.argv[1]} {installed} is installed, expected {sys.argv[2]}")
EOF
}

step "check for an existing install in $VENV"
[[ -x $PY ]] || { echo "install_caffe: $PY not found. Pass the venv folder as the first argument." >&2; exit 1; }
if caffe_installed; then
    echo "install_caffe: $CAFFE_DIST $CAFFE_VERSION already works in $VENV; nothing to do"
    exit 0
fi

mkdir -p "$BUILD_DIR" "$LOG_DIR"
# Serialize concurrent runs, because they share build/caffe/ and the venv.
exec 9>"$BUILD_DIR/.lock"
flock 9

step "install Debian build dependencies"
[[ $(id -u) -eq 0 ]] || { echo "install_caffe: apt-get needs root. Run this script as root." >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive
run_logged apt-update apt-get update -qq
run_logged apt-install apt-get install -y -qq --no-install-recommends "${APT_PACKAGES[@]}"

step "check Python headers and Boost.Python for $("$PY" -c 'import platform; print(platform.python_version())')"
PY_TAG=$("$PY" -c 'import sys; print(f"{sys.version_info.major}{sys.version_info.minor}")')
PY_INCLUDE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
if [[ ! -f $PY_INCLUDE/Python.h ]]; then
    echo "install_caffe: Python.h not found in $PY_INCLUDE. Install the -dev package of the venv's Python." >&2
    false
fi
if ! compgen -G "/usr/lib/*/libboost_python$PY_TAG.so" >/dev/null; then
    echo "install_caffe: libboost_python$PY_TAG.so not found. Debian 12 ships Boost.Python for Python 3.11 only, so use a Python 3.11 venv." >&2
    false
fi

step "install Python dependencies (${PY_DEPS[*]})"
STEP_LOG=$LOG_DIR/pip-deps.log
"$PY" -m pip install --dry-run --quiet --report "$BUILD_DIR/pip-deps-report.json" "${PY_DEPS[@]}" >"$STEP_LOG" 2>&1
STEP_LOG=""
CHANGED=$("$PY" - "$BUILD_DIR/pip-deps-report.json" "$PROTECTED_PACKAGES" <<'EOF'
import json
import sys

report = json.load(open(sys.argv[1]))
protected = set(sys.argv[2].split())
names = {item["metadata"]["name"].lower() for item in report["install"]}
print(" ".join(sorted(names & protected)))
EOF
)
if [[ -n $CHANGED ]]; then
    echo "install_caffe: installing ${PY_DEPS[*]} would install or change $CHANGED in $VENV. Install versions that fit by hand, then rerun." >&2
    false
fi
run_logged pip-deps "$PY" -m pip install --quiet "${PY_DEPS[@]}"

step "download the $CAFFE_DIST $CAFFE_VERSION sdist"
if [[ ! -f $SDIST ]] || ! echo "$SDIST_SHA256  $SDIST" | sha256sum --check --status; then
    rm -f "$SDIST"
    run_logged pip-download "$PY" -m pip download --no-deps --no-binary :all: \
        "$CAFFE_DIST==$CAFFE_VERSION" -d "$BUILD_DIR"
fi
STEP_LOG=""
if ! echo "$SDIST_SHA256  $SDIST" | sha256sum --check --status; then
    echo "install_caffe: $SDIST has SHA-256 $(sha256sum "$SDIST" | cut -d' ' -f1), expected $SDIST_SHA256" >&2
    false
fi

step "extract and patch the sources"
# The stamp keeps an already patched tree, and its CMake build folder, when nothing changed.
STAMP=$(cat "$SDIST" "$PATCH_DIR"/*.patch | sha256sum | cut -d' ' -f1)
if [[ ! -f $SRC_DIR/.patched || $(cat "$SRC_DIR/.patched") != "$STAMP" ]]; then
    rm -rf "$SRC_DIR"
    mkdir -p "$SRC_DIR"
    tar -xzf "$SDIST" -C "$SRC_DIR" --strip-components=1
    for patch_file in "$PATCH_DIR"/*.patch; do
        run_logged "patch-$(basename "$patch_file" .patch)" patch -p1 -d "$SRC_DIR" -i "$patch_file"
    done
    echo "$STAMP" >"$SRC_DIR/.patched"
fi

step "regenerate caffe_pb2.py with $(protoc --version)"
run_logged protoc protoc --proto_path="$SRC_DIR/src" --python_out="$SRC_DIR/python" \
    "$SRC_DIR/src/caffe/proto/caffe.proto"
# Debian 12's protoc is 3.21, but onnx 1.23 needs the protobuf>=6.31 runtime. Code generated by
# protoc 3.21 uses the descriptor-pool builder API, which protobuf 7.36 still loads, so check it here.
run_logged protoc-check "$PY" -c '
import importlib.util, sys
import google.protobuf
spec = importlib.util.spec_from_file_location("caffe_pb2", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
module.NetParameter(name="check").SerializeToString()
print("caffe_pb2 loads with protobuf", google.protobuf.__version__)
' "$SRC_DIR/python/caffe/proto/caffe_pb2.py"

step "build and install $CAFFE_DIST into $VENV with ${CAFFE_BUILD_JOBS:-2} jobs (log: $LOG_DIR/build.log)"
export CAFFE_BUILD_JOBS=${CAFFE_BUILD_JOBS:-2}
run_logged build "$PY" -m pip install --verbose --no-deps --no-build-isolation --force-reinstall "$SRC_DIR"

step "check that torch, caffe and onnx import together"
STEP_LOG=$LOG_DIR/verify.log
(cd /tmp && GLOG_minloglevel=2 "$PY" -c '
import torch
import caffe
import onnx
print(f"caffe {caffe.__version__}: {len(caffe.layer_type_list())} layer types; torch {torch.__version__}; onnx {onnx.__version__}")
') >"$STEP_LOG" 2>&1
caffe_installed
echo "install_caffe: done: $(cat "$STEP_LOG")"
