"""The fx-graph-to-Caffe exporter and its parity check in a pycaffe subprocess.

``emitter`` walks a GraphModule and calls the op-family modules (``ops_conv``,
``ops_activation``, ``ops_pool``, ``ops_linear``, ``ops_elementwise``,
``ops_shape``, ``ops_resize``) to emit layers of the brocolli-caffe build;
``runner`` runs the written model in pycaffe (always in a separate process:
a failed Caffe CHECK aborts it); ``parity`` compares it with PyTorch and
finds the first diverging blob; ``calibration`` writes the int8 calibration
table. Importing this package imports neither torch nor caffe.
"""
