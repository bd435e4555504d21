"""The contract every checker's catalogue keeps (``bnlib.check``), over all of them at once.

A catalogue is a checker's right solution and its known mistakes. For each: the right
solution passes, every catalogued mistake handed in as an answer is caught and gets exactly
its own hint, and no two mistakes share a hint (the reader could not tell them apart). The
chapters' checker tests (tests/test_check_*.py) add wrong answers written independently of
the catalogues, the way a reader would write them.
"""

from __future__ import annotations

import pytest
from checking import failure

from bnlib import check

CATALOGUES = check.catalogues()


def test_every_checker_with_a_catalogue_is_covered():
    # dropout_forward checks statistics of a random output, not values, so it has no
    # catalogue; its wrong answers are tested in tests/test_regularization.py.
    public = set(check.__all__) - {"catalogues", "grading", "results", "dropout_forward",
                                   "language", "set_language"}
    assert set(CATALOGUES) == public
    assert len(CATALOGUES) == 17


@pytest.mark.parametrize("name", sorted(CATALOGUES))
def test_the_right_solution_passes(name, capsys):
    assert getattr(check, name)(CATALOGUES[name].solution) is True
    assert capsys.readouterr().out.startswith(f"{name}: all ")


@pytest.mark.parametrize("name", sorted(CATALOGUES))
def test_every_mistake_is_caught_and_named(name):
    checker = getattr(check, name)
    for mistake in CATALOGUES[name].mistakes:
        assert failure(checker, mistake.solution) == f"{name}: {mistake.hint}"


@pytest.mark.parametrize("name", sorted(CATALOGUES))
def test_no_two_mistakes_share_a_hint(name):
    hints = [m.hint for m in CATALOGUES[name].mistakes]
    assert hints, f"{name} has no catalogued mistakes"
    assert len(set(hints)) == len(hints)
