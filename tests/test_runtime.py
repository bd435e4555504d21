"""bnlib.runtime: one switch (``BNLIB_SEED_OFFSET``) moves every seed the book uses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import bnlib
import bnlib.runtime
from bnlib import data, models, train
from bnlib.runtime import SEED_OFFSET_ENV, seed_offset, shift_seed


def draws() -> dict[str, np.ndarray]:
    """One draw from every seeded source the chapters use, at the current offset."""
    x = np.arange(100, dtype=np.float32).reshape(50, 2)
    y = np.arange(50) % 2
    torch.set_num_threads(1)
    bnlib.seed_everything(3)
    net = models.mlp([2, 4, 2])
    hist = train.fit(net, x, y, steps=3, batch_size=10, seed=5, progress=False)
    return {
        "global torch": torch.rand(4).numpy(),
        "returned rng": bnlib.seed_everything(3).random(4),
        "rng": bnlib.rng(3).random(4),
        "generator": torch.rand(4, generator=bnlib.generator(3)).numpy(),
        "subset": data.subset(x, y, 5, seed=3)[1],
        "blobs": data.gaussian_blobs(10, seed=3)[0],
        "fit": np.array(hist.train_loss),
    }


def test_offset_zero_leaves_every_seed_as_written(monkeypatch):
    monkeypatch.delenv(SEED_OFFSET_ENV, raising=False)
    assert seed_offset() == 0 and shift_seed(7) == 7
    assert np.array_equal(bnlib.rng(7).random(3), np.random.default_rng(7).random(3))
    same = torch.rand(3, generator=torch.Generator().manual_seed(7))
    assert torch.equal(torch.rand(3, generator=bnlib.generator(7)), same)


def test_an_offset_changes_every_draw_and_is_reproducible(monkeypatch):
    monkeypatch.setenv(SEED_OFFSET_ENV, "0")
    base = draws()
    monkeypatch.setenv(SEED_OFFSET_ENV, "2")
    shifted, again = draws(), draws()
    for name in base:
        assert not np.array_equal(base[name], shifted[name]), f"{name} ignores the offset"
        assert np.array_equal(shifted[name], again[name]), f"{name} is not reproducible"


def test_offsets_never_map_two_seeds_onto_one(monkeypatch):
    seen = set()
    for offset in range(5):
        monkeypatch.setenv(SEED_OFFSET_ENV, str(offset))
        seen |= {shift_seed(s) for s in range(1000)}
    assert len(seen) == 5000


@pytest.mark.parametrize("raw", ["one", "1.5", "-1"])
def test_a_bad_offset_is_a_clear_error(monkeypatch, raw):
    monkeypatch.setenv(SEED_OFFSET_ENV, raw)
    with pytest.raises(ValueError, match=SEED_OFFSET_ENV):
        bnlib.seed_everything(0)


def test_versions_names_a_nonzero_offset(monkeypatch):
    monkeypatch.setenv(SEED_OFFSET_ENV, "4")
    assert "seed offset: 4" in bnlib.versions()
    monkeypatch.setenv(SEED_OFFSET_ENV, "0")
    assert "seed offset" not in bnlib.versions()


def test_progress_summary_prints_one_final_line(monkeypatch, capsys):
    monkeypatch.setenv(bnlib.runtime.PROGRESS_ENV, "summary")
    assert list(bnlib.runtime.progress(range(5), "demo")) == [0, 1, 2, 3, 4]
    out = capsys.readouterr()
    assert out.out.startswith("demo: 5 steps in ") and out.out.count("\n") == 1
    assert out.err == ""  # no bar, not even a frozen one


def test_progress_bar_and_off(monkeypatch, capsys):
    monkeypatch.setenv(bnlib.runtime.PROGRESS_ENV, "off")
    assert list(bnlib.runtime.progress(range(3), "demo")) == [0, 1, 2]
    assert capsys.readouterr() == ("", "")
    monkeypatch.setenv(bnlib.runtime.PROGRESS_ENV, "bar")
    assert list(bnlib.runtime.progress(range(3), "demo")) == [0, 1, 2]
    assert "demo" in capsys.readouterr().err  # tqdm's text bar outside Jupyter
    monkeypatch.setenv(bnlib.runtime.PROGRESS_ENV, "sometimes")
    with pytest.raises(ValueError, match="BNLIB_PROGRESS"):
        list(bnlib.runtime.progress(range(3), "demo"))


def test_fit_reports_through_progress(monkeypatch, capsys):
    monkeypatch.setenv(bnlib.runtime.PROGRESS_ENV, "summary")
    x, y = np.zeros((8, 2), dtype=np.float32), np.arange(8) % 2
    train.fit(models.mlp([2, 2]), x, y, steps=3, batch_size=4, desc="tiny")
    assert capsys.readouterr().out.startswith("tiny: 3 steps in ")
