"""Int8 quantization: observers, qconfig, BatchNorm folding, observer insertion, int8 modules and conversion.

Everything here is our own code on plain integer tensors; nothing builds on
``torch.ao.quantization``, which is deprecated for removal.
"""
