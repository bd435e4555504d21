"""Tests of bnlib.data: loading, checksums, source order, errors, synthetic sets.

Every test runs offline: an autouse fixture points the user cache at a temporary
directory and switches off the system copy, apt and the mirrors. Tests that need a source
build a tiny stand-in dataset and tell the loader its hashes; "mirrors" are file:// URLs.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from bnlib import data
from bnlib.data import FILENAMES, CorruptFileWarning, DataUnavailableError

SYSTEM_COPY = Path("/usr/share/datasets/fashion-mnist")
REAL_SYSTEM_DIRS = data.SYSTEM_DIRS


def _no_apt(dest: Path) -> Path:
    raise RuntimeError("apt disabled in tests")


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No source outside tmp_path: no network, no apt, no system copy, no real cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv("BNLIB_DATA", raising=False)
    monkeypatch.setattr(data, "SYSTEM_DIRS", {})
    monkeypatch.setattr(data, "MIRRORS", {})
    monkeypatch.setattr(data, "_fetch_deb", _no_apt)


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "xdg-cache" / "bnlib" / "fashion-mnist"


# ------------------------------------------------------------------ a tiny stand-in dataset


def idx_bytes(array: np.ndarray) -> bytes:
    """Unsigned-byte IDX encoding, written independently of the parser under test."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


@dataclass
class Tiny:
    dir: Path
    arrays: tuple[np.ndarray, ...]  # x_train, y_train, x_test, y_test as uint8
    sha256: dict[str, str]

    def copy_to(self, dest: Path) -> Path:
        dest.mkdir(parents=True, exist_ok=True)
        for filename in FILENAMES:
            shutil.copyfile(self.dir / filename, dest / filename)
        return dest


@pytest.fixture
def tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Tiny:
    """Fashion-MNIST in miniature (12 train, 5 test images), its hashes given to the loader."""
    rng = np.random.default_rng(1)
    x_train = rng.integers(0, 256, (12, 28, 28))
    x_train[0, 0, :2] = 0, 255  # both ends of the pixel range occur
    arrays = (x_train, np.arange(12) % 10, rng.integers(0, 256, (5, 28, 28)), np.arange(5)[::-1])
    directory = tmp_path / "tiny"
    directory.mkdir()
    hashes = {}
    for filename, array in zip(FILENAMES, arrays, strict=True):
        raw = idx_bytes(array)
        (directory / filename).write_bytes(gzip.compress(raw))
        hashes[filename] = hashlib.sha256(raw).hexdigest()
    monkeypatch.setitem(data.SHA256, "fashion-mnist", hashes)
    return Tiny(directory, arrays, hashes)


def change_contents(path: Path) -> str:
    """Flip a byte of the decompressed contents, keep valid gzip; return the new SHA-256."""
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[-1] ^= 0xFF
    path.write_bytes(gzip.compress(bytes(raw)))
    return hashlib.sha256(raw).hexdigest()


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def mirror(directory: Path) -> dict[str, tuple[str, ...]]:
    return {"fashion-mnist": (directory.as_uri() + "/",)}


def decompressed_sha256(path: Path) -> str:
    return hashlib.sha256(gzip.decompress(path.read_bytes())).hexdigest()


# ------------------------------------------------------------------------- the real thing


@pytest.mark.skipif(
    not SYSTEM_COPY.is_dir(),
    reason=f"{SYSTEM_COPY} absent: install Debian's dataset-fashion-mnist to run this test",
)
def test_load_fashion_mnist_from_the_system_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "SYSTEM_DIRS", REAL_SYSTEM_DIRS)
    ds = data.load()

    assert ds.source == f"{SYSTEM_COPY} (system copy)"
    assert ds.x_train.shape == (60000, 28, 28) and ds.x_test.shape == (10000, 28, 28)
    assert ds.y_train.shape == (60000,) and ds.y_test.shape == (10000,)
    assert ds.x_train.dtype == ds.x_test.dtype == np.float32
    assert ds.y_train.dtype == ds.y_test.dtype == np.int64
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    assert 0.0 <= ds.x_test.min() and ds.x_test.max() <= 1.0
    # Fashion-MNIST is balanced: 6000 training and 1000 test images of each class.
    assert np.bincount(ds.y_train).tolist() == [6000] * 10
    assert np.bincount(ds.y_test).tolist() == [1000] * 10
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"
    assert len(ds.classes) == 10
    assert ds.name == "Fashion-MNIST" and repr(ds).startswith("Dataset('Fashion-MNIST', ")
    assert ds.classes[ds.y_train[0]] == "Ankle boot"  # the dataset's well-known first image

    ds.x_train[0] = -1.0  # the caller's arrays are its own ...
    hits = data._read_arrays.cache_info().hits
    flat = data.load(flatten=True)
    assert data._read_arrays.cache_info().hits == hits + 1  # ... and the files were parsed once
    assert flat.x_train.shape == (60000, 784) and flat.x_test.shape == (10000, 784)
    assert flat.x_train.min() == 0.0  # the -1.0 written above did not leak into the cache
    np.testing.assert_array_equal(flat.x_test.reshape(-1, 28, 28), ds.x_test)


# ---------------------------------------------------------------------- where files come from


def test_bnlib_data_is_honoured_and_values_are_pixels_over_255(
    tiny: Tiny, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BNLIB_DATA", str(tiny.dir))
    ds = data.load()
    assert ds.source == f"{tiny.dir} (BNLIB_DATA)"
    x_train, y_train, x_test, y_test = tiny.arrays
    np.testing.assert_array_equal(ds.x_train, x_train.astype(np.float32) / 255)
    np.testing.assert_array_equal(ds.x_test, x_test.astype(np.float32) / 255)
    np.testing.assert_array_equal(ds.y_train, y_train)
    np.testing.assert_array_equal(ds.y_test, y_test)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0


def test_bnlib_data_uses_the_dataset_subdirectory_when_present(
    tiny: Tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "datasets"
    tiny.copy_to(root / "fashion-mnist")
    monkeypatch.setenv("BNLIB_DATA", str(root))
    assert data.ensure() == root / "fashion-mnist"


def test_explicit_data_dir_beats_bnlib_data(
    tiny: Tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from_env = tiny.copy_to(tmp_path / "from-env")
    from_arg = tiny.copy_to(tmp_path / "from-arg")
    monkeypatch.setenv("BNLIB_DATA", str(from_env))
    assert data.ensure() == from_env
    assert data.ensure(data_dir=from_arg) == from_arg
    assert data.load(data_dir=str(from_arg)).source == f"{from_arg} (data_dir)"


def test_apt_step_fills_the_cache(
    tiny: Tiny, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch_dirs = []

    def fake_deb(dest: Path) -> Path:
        scratch_dirs.append(dest)
        return tiny.dir  # stands for the unpacked .deb

    monkeypatch.setattr(data, "_fetch_deb", fake_deb)
    ds = data.load()
    assert ds.source == f"{cache} (user cache, filled by apt-get download dataset-fashion-mnist)"
    assert sorted(p.name for p in cache.iterdir()) == sorted(FILENAMES)
    assert not scratch_dirs[0].exists()  # the unpacked package was cleaned up
    assert data.ensure() == cache  # and the next call finds the cache without apt
    assert len(scratch_dirs) == 1


# ------------------------------------------------------------------------- damaged files


@pytest.mark.parametrize("damage", ["changed contents", "truncated"])
def test_damaged_cache_file_is_reported_deleted_and_fetched_again(
    damage: str, tiny: Tiny, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny.copy_to(cache)
    victim = cache / FILENAMES[2]
    actual = change_contents(victim) if damage == "changed contents" else None
    if damage == "truncated":
        truncate(victim)
    monkeypatch.setattr(data, "MIRRORS", mirror(tiny.dir))

    with pytest.warns(CorruptFileWarning) as record:
        ds = data.load()

    messages = [str(w.message) for w in record if issubclass(w.category, CorruptFileWarning)]
    assert len(messages) == 1
    assert str(victim) in messages[0] and tiny.sha256[FILENAMES[2]] in messages[0]
    if actual is not None:
        assert actual in messages[0]
    assert decompressed_sha256(victim) == tiny.sha256[FILENAMES[2]]
    assert ds.source.startswith(f"{cache} (user cache, filled by download from file://")
    np.testing.assert_array_equal(ds.x_test, tiny.arrays[2].astype(np.float32) / 255)
    assert not list(cache.glob("*.part"))


def test_damaged_cache_file_with_no_good_source_raises_and_is_not_kept(
    tiny: Tiny, cache: Path
) -> None:
    tiny.copy_to(cache)
    change_contents(cache / FILENAMES[0])
    with pytest.warns(CorruptFileWarning, match=FILENAMES[0]):
        with pytest.raises(DataUnavailableError, match="1 of 4 files missing or damaged"):
            data.load()
    assert not (cache / FILENAMES[0]).exists()
    assert all((cache / filename).exists() for filename in FILENAMES[1:])


def test_damaged_file_in_read_only_dir_is_skipped_not_deleted(
    tiny: Tiny, tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    readonly = tiny.copy_to(tmp_path / "readonly")
    truncate(readonly / FILENAMES[1])
    damaged_bytes = (readonly / FILENAMES[1]).read_bytes()
    monkeypatch.setattr(data, "MIRRORS", mirror(tiny.dir))

    with pytest.warns(CorruptFileWarning, match=f"Skipping data_dir {readonly}"):
        directory = data.ensure(data_dir=readonly)

    assert directory == cache
    assert (readonly / FILENAMES[1]).read_bytes() == damaged_bytes


def test_bad_download_is_rejected_and_the_next_mirror_used(
    tiny: Tiny, tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = tiny.copy_to(tmp_path / "bad-mirror")
    change_contents(bad / FILENAMES[0])
    bad_url = bad.as_uri() + "/"
    monkeypatch.setattr(data, "MIRRORS", {"fashion-mnist": (bad_url,)})
    with pytest.warns(CorruptFileWarning, match="Not used"):
        with pytest.raises(DataUnavailableError, match=f"download from {bad_url}: {FILENAMES[0]}"):
            data.ensure()
    assert not (cache / FILENAMES[0]).exists()
    assert not list(cache.glob("*.part"))

    monkeypatch.setattr(data, "MIRRORS", {"fashion-mnist": (bad_url, tiny.dir.as_uri() + "/")})
    with pytest.warns(CorruptFileWarning):
        assert data.ensure() == cache
    assert decompressed_sha256(cache / FILENAMES[0]) == tiny.sha256[FILENAMES[0]]


# ------------------------------------------------------------------------ nothing available


def test_no_source_raises_one_error_saying_what_to_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(data, "SYSTEM_DIRS", {"fashion-mnist": (tmp_path / "not-installed",)})
    with pytest.raises(DataUnavailableError) as caught:
        data.load()
    message = str(caught.value)
    assert "sudo apt-get install dataset-fashion-mnist" in message
    assert "BNLIB_DATA" in message and "internet" in message
    assert f"{tmp_path / 'not-installed'}: no such directory" in message
    assert "apt-get download dataset-fashion-mnist: apt disabled in tests" in message

    with pytest.raises(DataUnavailableError) as caught:
        data.load("mnist")
    assert "BNLIB_DATA" in str(caught.value)
    assert "apt-get" not in str(caught.value)  # there is no MNIST package to suggest


def test_unknown_dataset_name_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown dataset 'cifar10'"):
        data.load("cifar10")


# ---------------------------------------------------------------------------- IDX parsing


def test_idx_parser_reads_shape_and_values() -> None:
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(data._parse_idx(idx_bytes(array)), array)


def test_idx_parser_rejects_a_bad_magic_number() -> None:
    raw = bytearray(idx_bytes(np.zeros((2, 28, 28), np.uint8)))
    raw[2] = 0x0D  # float32 data, not unsigned bytes
    with pytest.raises(ValueError, match="bad magic number 0x00000d03"):
        data._parse_idx(bytes(raw))
    with pytest.raises(ValueError, match="bad magic number"):
        data._parse_idx(b"\x1f\x8b\x08\x00" + bytes(20))  # still gzip-compressed


def test_idx_parser_rejects_a_size_that_disagrees_with_the_header() -> None:
    raw = idx_bytes(np.zeros((3, 28, 28), np.uint8))
    with pytest.raises(ValueError, match="truncated"):
        data._parse_idx(raw[:-1])


def test_load_names_the_file_with_a_bad_magic_number(
    tiny: Tiny, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = bytearray(gzip.decompress((tiny.dir / FILENAMES[3]).read_bytes()))
    raw[3] = 2  # claims two dimensions
    (tiny.dir / FILENAMES[3]).write_bytes(gzip.compress(bytes(raw)))
    monkeypatch.setitem(data.SHA256["fashion-mnist"], FILENAMES[3], hashlib.sha256(raw).hexdigest())
    with pytest.raises(ValueError, match=FILENAMES[3]):
        data.load(data_dir=tiny.dir)


# ------------------------------------------------------------------------ synthetic helpers


def test_gaussian_blobs_shapes_seeding_and_layout() -> None:
    x, y = data.gaussian_blobs(300, num_classes=3, dim=2, spread=0.1, seed=0)
    assert x.shape == (300, 2) and x.dtype == np.float32
    assert y.shape == (300,) and y.dtype == np.int64
    assert np.bincount(y).tolist() == [100, 100, 100]
    x_again, y_again = data.gaussian_blobs(300, num_classes=3, dim=2, spread=0.1, seed=0)
    np.testing.assert_array_equal(x, x_again)
    np.testing.assert_array_equal(y, y_again)
    assert not np.array_equal(data.gaussian_blobs(300, spread=0.1, seed=1)[0], x)

    means = np.stack([x[y == k].mean(axis=0) for k in range(3)])
    np.testing.assert_allclose(np.linalg.norm(means, axis=1), 3.0, atol=0.05)
    assert np.linalg.norm(means[0] - means[1]) > 4  # centres 120 degrees apart on radius 3
    np.testing.assert_allclose(x[y == 0].std(axis=0), 0.1, rtol=0.3)
    nearest = np.argmin(np.linalg.norm(x[:, None, :] - means[None], axis=2), axis=1)
    assert np.array_equal(nearest, y)


@pytest.mark.parametrize(("n", "num_classes", "dim"), [(10, 3, 1), (7, 4, 5), (5, 1, 2)])
def test_gaussian_blobs_other_sizes(n: int, num_classes: int, dim: int) -> None:
    x, y = data.gaussian_blobs(n, num_classes=num_classes, dim=dim, spread=0.01)
    assert x.shape == (n, dim) and y.shape == (n,)
    counts = np.bincount(y, minlength=num_classes)
    assert counts.max() - counts.min() <= 1
    centres = {tuple(np.round(x[y == k].mean(axis=0), 1)) for k in range(num_classes)}
    assert len(centres) == num_classes  # every class has a centre of its own


def test_subset_is_seeded_paired_and_sized() -> None:
    x = np.repeat(np.arange(50)[:, None], 3, axis=1)
    y = 2 * np.arange(50)
    xs, ys = data.subset(x, y, 10, seed=3)
    assert xs.shape == (10, 3) and ys.shape == (10,)
    np.testing.assert_array_equal(ys, 2 * xs[:, 0])  # rows keep their labels
    assert len(set(ys.tolist())) == 10  # no row twice
    np.testing.assert_array_equal(data.subset(x, y, 10, seed=3)[1], ys)
    assert not np.array_equal(data.subset(x, y, 10, seed=4)[1], ys)
    assert not np.array_equal(ys, y[:10])  # shuffled, not the first ten
    everything = data.subset(x, y, 500)[1]
    assert sorted(everything.tolist()) == y.tolist()
    with pytest.raises(ValueError, match="differ in length"):
        data.subset(x, y[:-1], 5)


# ------------------------------------------------------------------------------ command line


def test_cli_prints_where_the_files_are(
    tiny: Tiny, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BNLIB_DATA", str(tiny.dir))
    assert data.main([]) == 0
    assert capsys.readouterr().out == f"fashion-mnist: {tiny.dir} (BNLIB_DATA)\n"


def test_cli_fails_with_the_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert data.main(["fashion-mnist"]) == 1
    assert "sudo apt-get install dataset-fashion-mnist" in capsys.readouterr().err


def test_module_entry_point_exits_non_zero_on_failure() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bnlib.data", "no-such-set"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 1
    assert "unknown dataset 'no-such-set'" in done.stderr


def test_pool2_averages_each_2x2_block():
    images = np.arange(2 * 4 * 6, dtype=np.float64).reshape(2, 4, 6)
    pooled = data.pool2(images)
    assert pooled.shape == (2, 2, 3)
    assert pooled[1, 1, 2] == images[1, 2:4, 4:6].mean()
    assert np.allclose(pooled.mean(), images.mean())
    with pytest.raises(ValueError, match="even height and width"):
        data.pool2(np.zeros((1, 5, 4)))
