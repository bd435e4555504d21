"""bnlib: the library behind the Batch Normalization book.

Modules: :mod:`bnlib.reference` (NumPy), :mod:`bnlib.torch_bn` (PyTorch), :mod:`bnlib.data`,
:mod:`bnlib.models`, :mod:`bnlib.train`, :mod:`bnlib.plots`, :mod:`bnlib.check`.
"""

from bnlib.runtime import device, seed_everything, versions

__all__ = ["device", "seed_everything", "versions"]
__version__ = "0.1.0"
