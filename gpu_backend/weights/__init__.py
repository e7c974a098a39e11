"""Lossless compressed weights (ECF, docs/weights-format.md): the format, its torch codec, reading and writing.

A floor below the loader: it imports only ``gpu_backend.errors`` and the libraries.
"""

from .compress import CompressSummary, compress_checkpoint, compress_tensors
from .format import FORMAT_NAME, FORMAT_VERSION
from .reader import is_compressed, open_weights

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "CompressSummary", "compress_checkpoint", "compress_tensors", "is_compressed",
           "open_weights"]
