"""Lossless compressed weights (ECF, docs/weights-format.md): the format, its torch codec, reading and writing.

A floor below the loader and the layers: it imports only ``gpu_backend.errors``, ``gpu_backend.checkpoint_tensor``
and the libraries.
"""

from .compress import CompressSummary, compress_checkpoint, compress_tensors
from .format import FORMAT_NAME, FORMAT_VERSION
from .reader import is_compressed, open_weights

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "CompressSummary", "compress_checkpoint", "compress_tensors", "is_compressed",
           "open_weights"]
