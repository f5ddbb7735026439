"""The fx-graph-to-ONNX exporter and its parity check against onnxruntime.

``emitter`` walks a GraphModule and asks the op-family modules
(``ops_conv``, ``ops_activation``, ``ops_pool``, ``ops_elementwise``,
``ops_shape``, ``ops_linear``, ``ops_quant``) to emit standard-domain ONNX
nodes; ``parity`` runs the result in onnxruntime against the GraphModule and
finds the first node that diverges; ``contract`` writes the input contract.
"""
