"""Accuracy and per-node error of an int8 GraphModule against its fp32 model.

``compare`` runs both models over a data set, ``metrics`` turns the sums into
metrics and per_node.json, ``chart`` draws the per-node SQNR.
"""

from __future__ import annotations
