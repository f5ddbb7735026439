"""Build a user's model and trace it into a ``torch.fx.GraphModule``.

``stages.tracing.source`` builds the ``nn.Module`` from the pipeline's
``model`` section; ``stages.tracing.tracer`` traces it with ``ModelTracer``
and turns trace failures into one-line messages that name the module and the
line of user code.

This package imports nothing itself: ``stages.tracing.source.model_source_file``
serves cache-key computation, which must not import torch.
"""
