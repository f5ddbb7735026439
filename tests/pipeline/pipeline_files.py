"""Small pipeline files for engine tests."""

from __future__ import annotations

import textwrap
from pathlib import Path

TINY_MODEL = '''
import torch
from torch import nn


def build(width=4):
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 3))
'''


def write_pipeline(folder: Path, body: str, name: str = "p.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(body).lstrip())
    return path


HEADER = """
version: 1
name: tiny
model:
  source: tiny_model:build
  input_shape: [1, 1, 8, 8]
data:
  rand:
    source: random
    kwargs: {shape: [16, 1, 8, 8]}
    limit: 16
    batch_size: 8
"""

# A model whose construction can be made slow through an environment
# variable, so a test can kill `pipe run` while the trace stage runs. The
# variable is not part of the cache key.
SLOW_MODEL = '''
import os
import time
from pathlib import Path

from torch import nn


def build(width=4):
    marker = os.environ.get("PIPE_TEST_STARTED")
    if marker:
        Path(marker).write_text("started")
    time.sleep(float(os.environ.get("PIPE_TEST_SLEEP", "0")))
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.Flatten())
'''

TRACE_ONLY = HEADER + """
stages:
  - name: trace
    kind: trace
"""

# A model with 100 MB of weights, so that saving, hashing and storing its
# artifact take long enough for a test to kill `pipe run` in the middle.
BIG_MODEL = '''
import os
from pathlib import Path

from torch import nn


def build():
    marker = os.environ.get("PIPE_TEST_STARTED")
    if marker:
        Path(marker).write_text("started")
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 5000), nn.ReLU(), nn.Linear(5000, 5000))
'''

PARALLEL = HEADER + """
stages:
  - name: trace
    kind: trace
  - name: qconfig
    kind: prepare-qconfig
  - name: observe
    kind: insert-observers
  - name: calibrate
    kind: calibrate
    data: rand
  - name: convert
    kind: convert
  - name: onnx_fp32
    kind: export
    needs: [trace]
    format: onnx
    precision: fp32
    data: rand
"""
