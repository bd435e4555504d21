"""Exercise checkers: run the reader's function on inputs made here and say what is wrong.

Every checker keeps one contract (the book's design guide, section 3):

* it builds its own float64, seeded inputs, hard cases included (tiny and zero variance,
  a large offset, ``N != D`` so axis mistakes show, small and larger batches);
* an untouched stub that raises ``NotImplementedError`` prints "not done yet" and returns
  ``False``;
* a wrong answer raises ``AssertionError`` naming the likely mistake and its fix; so do a
  wrong shape or type, NaN or inf, an exception in the reader's code, and an input changed
  in place;
* success prints one short line and returns ``True``.

How the diagnosis works: an exercise is a right solution plus a catalogue of known wrong
solutions (:class:`_Mistake`), all with the reader's signature. When the reader's outputs
differ from the right ones, every wrong solution runs on the same inputs, and the hint of
the one the reader's outputs match is reported; when none matches, the message shows the
largest error, where it is, and the expected and actual values.

**Grading mode.** With the environment variable ``BNLIB_GRADING=1`` (set by
``python -m bnlib.grade``, for an instructor marking submissions) a failing checker still
raises ``AssertionError``, but its message only names the case that fails, without the hint
or the right values: right for an assignment, where self-study wants the fix. Either way,
every checker records its verdict, which :func:`results` returns.

**Language.** The checkers speak English, or Korean in the Korean edition: its notebooks set
``os.environ["BNLIB_LANG"] = "ko"`` in a code cell of their own, before the first checker
runs. The variable is read at every message; :func:`set_language` (``"en"``, ``"ko"``, or
``None`` to let the variable decide again) overrides it and :func:`language` says which is in
use. The translations live in ``bnlib/locale/ko/LC_MESSAGES/bnlib.po`` (compiled to
``bnlib.mo``); :mod:`bnlib.check._i18n` holds the machinery and says how to update them.

Layout: :mod:`bnlib.check._core` holds the machinery (cases, mistakes, diagnosis, verdicts,
grading, the registry of catalogues); each chapter's checkers and their catalogues of
mistakes live in a module of their own, in reading order, ``ch01_feature_scaling`` to
``ch11_distribution_shift``. A new checker is an :class:`~bnlib.check._core._Exercise` (its right
solution, its mistakes and the right formula; creating it registers it), a function making
its ``_Case`` list, and a public function that calls ``_check``, like
:func:`~bnlib.check.ch03_bn_algorithm.batchnorm_forward`; export it here. Every message a
reader sees goes through ``_()`` of :mod:`bnlib.check._i18n` (a catalogue's hints and formula
are translated where they are shown); after adding or changing one, update the Korean catalog.
"""

from bnlib.check._core import catalogues, grading, results
from bnlib.check._i18n import language, set_language
from bnlib.check.ch01_feature_scaling import standardize
from bnlib.check.ch02_covariate_shift import importance_weights, saturation_fraction
from bnlib.check.ch03_bn_algorithm import batchnorm_backward, batchnorm_forward
from bnlib.check.ch04_running_statistics import running_stats_update
from bnlib.check.ch05_bn_in_cnns import fold_bn_into_conv, spatial_batchnorm_forward
from bnlib.check.ch06_regularization import dropout_backward, dropout_forward
from bnlib.check.ch07_batch_size import group_norm
from bnlib.check.ch08_paper_reproduction import inference_bn
from bnlib.check.ch09_making_bn_fast import bn_bytes
from bnlib.check.ch10_normalization_without_batch import rms_norm, ws_conv2d
from bnlib.check.ch11_distribution_shift import (
    adabn_statistics,
    tent_entropy,
    tent_parameters,
)

__all__ = [
    "standardize", "saturation_fraction", "importance_weights", "batchnorm_forward",
    "batchnorm_backward", "running_stats_update", "spatial_batchnorm_forward",
    "fold_bn_into_conv", "dropout_forward", "dropout_backward", "group_norm", "inference_bn",
    "bn_bytes", "rms_norm", "ws_conv2d", "adabn_statistics", "tent_entropy", "tent_parameters",
    "catalogues", "grading", "results", "language", "set_language",
]
