"""Stage kinds of the `pipe` pipeline runner.

Each kind lives in its own module and subclasses
:class:`pipeline.contract.Stage`; heavy work lives in the subpackages
(``tracing``, ``quant``, ``data``, ``onnx``, ``caffe``, ``evaluation``,
``profiling``). Importing this package or a stage module never imports torch.
"""

from __future__ import annotations

import importlib

from pipeline.contract import Stage

# The code that loading a saved model runs: the artifact format, and the
# classes and fx-wrapped functions that a pickled GraphModule refers to.
# Every stage that loads a model has these in its ``sources``.
MODEL_SOURCES = ("artifacts.py", "tracing", "quant")

# kind -> "module:class". The order is the order `pipe stages` lists them.
KINDS: dict[str, str] = {
    "trace": "stages.trace:Trace",
    "prepare-qconfig": "stages.prepare_qconfig:PrepareQconfig",
    "sensitivity": "stages.sensitivity:Sensitivity",
    "insert-observers": "stages.insert_observers:InsertObservers",
    "calibrate": "stages.calibrate:Calibrate",
    "convert": "stages.convert:Convert",
    "evaluate": "stages.evaluate:Evaluate",
    "export": "stages.export:Export",
    "profile": "stages.profile:Profile",
}


def load_stage(kind: str) -> Stage:
    """Return an instance of the stage class registered for ``kind``."""
    module_name, class_name = KINDS[kind].split(":")
    module = importlib.import_module(module_name)
    return getattr(module, class_name)()
