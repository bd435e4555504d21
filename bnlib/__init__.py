"""bnlib: the library behind the Batch Normalization book.

Modules: :mod:`bnlib.reference` (NumPy), :mod:`bnlib.torch_bn` (PyTorch), :mod:`bnlib.data`,
:mod:`bnlib.models`, :mod:`bnlib.train`, :mod:`bnlib.plots`, :mod:`bnlib.check`, and the
modules of single chapters; the README's tables say which chapter uses which.
"""

from bnlib.runtime import device, generator, rng, seed_everything, shift_seed, versions

__all__ = ["device", "generator", "rng", "seed_everything", "shift_seed", "versions"]
__version__ = "0.1.0"
