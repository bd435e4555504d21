"""Fashion-MNIST and MNIST as NumPy arrays, and small synthetic sets for toy demos.

``load()`` gives images as float32 in [0, 1] and labels as int64. Before a file is read,
the SHA-256 of its *decompressed* IDX contents is checked (mirrors may recompress the
``.gz`` files, which changes their own hashes but not the contents). The four files are
looked for in this order (design guide, section 5):

1. an explicit directory: the ``data_dir`` argument, else ``$BNLIB_DATA`` (its
   ``<name>/`` subdirectory when that exists); then the user cache
   ``${XDG_CACHE_HOME:-~/.cache}/bnlib/<name>/``;
2. Fashion-MNIST only: the system copy from the Debian/Ubuntu package
   ``dataset-fashion-mnist``, read in place; failing that, ``apt-get download`` of that
   package (no root needed), unpacked, and its files copied into the cache;
3. a download from the dataset's canonical mirror into the cache.

A damaged file is reported with a :class:`CorruptFileWarning`: in the cache it is deleted
and fetched again; in a read-only directory (explicit or system) that directory is
skipped. When nothing works, one :class:`DataUnavailableError` lists what was tried and
says what to run.

Command line (``make data``): ``python -m bnlib.data [fashion-mnist] [mnist]``.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.client
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from bnlib.runtime import rng

# The four files of each dataset, in the order x_train, y_train, x_test, y_test.
FILENAMES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)

# SHA-256 of each file's decompressed IDX contents.
# Fashion-MNIST: checked against the files of Debian's dataset-fashion-mnist package.
# MNIST: the same four values are pinned by several independent public scripts that
# verify the decompressed IDX files (one of them also pins the Fashion-MNIST values
# above, confirming the convention); no MNIST copy was at hand to recompute them.
SHA256 = {
    "fashion-mnist": dict(zip(FILENAMES, (
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",  # train images
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",  # train labels
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",  # test images
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",  # test labels
    ), strict=True)),
    "mnist": dict(zip(FILENAMES, (
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    ), strict=True)),
}

CLASSES = {
    "fashion-mnist": (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ),
    "mnist": tuple(str(digit) for digit in range(10)),
}
DISPLAY_NAMES = {"fashion-mnist": "Fashion-MNIST", "mnist": "MNIST"}

# Read-only copies installed by the system, used in place.
SYSTEM_DIRS = {"fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),)}

# The Debian/Ubuntu package that ships Fashion-MNIST, and where its files sit inside it.
DEB_PACKAGE = "dataset-fashion-mnist"
DEB_DATA_DIR = "usr/share/datasets/fashion-mnist"

# Base URLs, tried in order; a file's URL is the base followed by its name.
MIRRORS = {
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
}

DOWNLOAD_TIMEOUT = 30.0  # seconds without an answer before a mirror counts as down
APT_TIMEOUT = 120.0  # seconds for each of apt-get download and dpkg-deb

_MISSING = "missing"
# What a failing source may raise; anything else is a bug and propagates.
_FETCH_ERRORS = (OSError, EOFError, ValueError, RuntimeError, zlib.error, http.client.HTTPException)


class DataUnavailableError(RuntimeError):
    """No source could provide the dataset; the message says what was tried and what to run."""


class CorruptFileWarning(UserWarning):
    """A data file failed its checksum (or could not be decompressed) and was not used."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """One image-classification dataset in memory.

    Attributes:
        x_train: ``(60000, 28, 28)`` float32 in [0, 1], or ``(60000, 784)`` when flattened.
        y_train: ``(60000,)`` int64 class indices in ``0..9``.
        x_test: ``(10000, 28, 28)`` float32, or ``(10000, 784)``.
        y_test: ``(10000,)`` int64.
        classes: the ten class names; ``classes[y]`` names label ``y``.
        name: the dataset's display name, ``"Fashion-MNIST"`` or ``"MNIST"``.
        source: where the files were read from and how they got there, e.g.
            ``"/usr/share/datasets/fashion-mnist (system copy)"``.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple[str, ...]
    name: str
    source: str

    def __repr__(self) -> str:
        arrays = ", ".join(
            f"{field}={tuple(array.shape)} {array.dtype}"
            for field, array in vars(self).items()
            if isinstance(array, np.ndarray)
        )
        return (f"Dataset({self.name!r}, {arrays}, classes={len(self.classes)}, "
                f"source={self.source!r})")


# ------------------------------------------------------------------------------ public API


def load(
    name: str = "fashion-mnist", data_dir: str | Path | None = None, flatten: bool = False
) -> Dataset:
    """Load Fashion-MNIST (default) or MNIST (``name="mnist"``), fetching it if needed.

    Images come as float32 in [0, 1] of shape ``(N, 28, 28)``, or ``(N, 784)`` with
    ``flatten=True``; labels as int64 of shape ``(N,)``; N is 60000 for training and
    10000 for test. See the module docstring for where the files are looked for.
    Parsed files are kept in memory, so a second call only converts to float again; each
    call returns arrays of its own, free to modify.

    Raises:
        DataUnavailableError: when no source works; the message says what to run.
        ValueError: for a dataset name other than ``"fashion-mnist"`` or ``"mnist"``.
    """
    name = _canonical(name)
    directory, how = _resolve(name, data_dir)
    x_train, y_train, x_test, y_test = _read_arrays(directory.resolve())
    return Dataset(
        x_train=_to_float(x_train, flatten),
        y_train=y_train.astype(np.int64),
        x_test=_to_float(x_test, flatten),
        y_test=y_test.astype(np.int64),
        classes=CLASSES[name],
        name=DISPLAY_NAMES[name],
        source=f"{directory} ({how})",
    )


def ensure(name: str = "fashion-mnist", data_dir: str | Path | None = None) -> Path:
    """Make the four verified ``.gz`` files of ``name`` available; return their directory.

    Raises:
        DataUnavailableError: when no source works.
        ValueError: for a dataset name other than ``"fashion-mnist"`` or ``"mnist"``.
    """
    directory, _ = _resolve(_canonical(name), data_dir)
    return directory


def pool2(images: np.ndarray) -> np.ndarray:
    """Average 2x2 pixel blocks: ``(N, H, W)`` -> ``(N, H // 2, W // 2)``, ``H`` and ``W`` even.

    E.g. Fashion-MNIST at 14x14 pixels, a quarter of the inputs for the chapters whose
    networks must train in seconds.
    """
    n, h, w = images.shape
    if h % 2 or w % 2:
        raise ValueError(f"pool2 needs an even height and width, got {h}x{w}")
    return images.reshape(n, h // 2, 2, w // 2, 2).mean(axis=(2, 4))


def subset(
    x: np.ndarray, y: np.ndarray, n: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random subset: the first ``n`` rows of a random permutation of ``(x, y)``.

    ``x`` has shape ``(N, ...)`` and ``y`` shape ``(N,)``; the result has ``min(n, N)``
    rows, with each ``x`` row still paired with its label. The permutation is seeded with
    :func:`bnlib.runtime.shift_seed` of ``seed``.
    """
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} and {len(y)}")
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    rows = rng(seed).permutation(len(x))[:n]
    return x[rows], y[rows]


def gaussian_blobs(
    n: int, num_classes: int = 3, dim: int = 2, spread: float = 1.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points in ``num_classes`` Gaussian clusters, for toy demos.

    Class ``k`` is centred at distance 3 from the origin, at angle ``2*pi*k/num_classes``
    in the first two coordinates (evenly spaced on ``[-3, 3]`` when ``dim=1``); each
    coordinate then gets noise of standard deviation ``spread``. Classes are balanced
    (sizes differ by at most one) and shuffled. Seeded with ``shift_seed(seed)``.

    Returns:
        x: ``(n, dim)`` float32.
        y: ``(n,)`` int64 in ``0..num_classes-1``.
    """
    if n < 1 or num_classes < 1 or dim < 1:
        raise ValueError(f"need n, num_classes and dim >= 1, got {n}, {num_classes}, {dim}")
    draw = rng(seed)
    centers = np.zeros((num_classes, dim))
    if dim == 1:
        centers[:, 0] = np.linspace(-3.0, 3.0, num_classes) if num_classes > 1 else 0.0
    else:
        angles = 2 * np.pi * np.arange(num_classes) / num_classes
        centers[:, 0], centers[:, 1] = 3 * np.cos(angles), 3 * np.sin(angles)
    y = draw.permutation(np.arange(n) % num_classes)
    x = centers[y] + spread * draw.standard_normal((n, dim))
    return x.astype(np.float32), y.astype(np.int64)


# ------------------------------------------------------------------------------ resolution


def _canonical(name: str) -> str:
    key = name.lower().replace("_", "-")
    if key not in SHA256:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(SHA256)}")
    return key


def _resolve(name: str, data_dir: str | Path | None) -> tuple[Path, str]:
    """The directory holding verified files of ``name``, and how it was found."""
    failures: list[str] = []
    explicit = _explicit_dir(name, data_dir)
    if explicit is not None and _verified_dir(*explicit, name, failures):
        return explicit
    cache = _cache_dir(name)
    missing = _lacking_in_cache(cache, name)
    if not missing:
        return cache, "user cache"
    failures.append(f"user cache {cache}: {len(missing)} of 4 files missing or damaged")
    for system_dir in SYSTEM_DIRS.get(name, ()):
        if _verified_dir(system_dir, "system copy", name, failures):
            return system_dir, "system copy"
    for label, fetch in _fetch_steps(name):
        try:
            fetch(cache, name, missing)
        except _FETCH_ERRORS as err:
            failures.append(f"{label}: {err}")
        if not missing:
            return cache, f"user cache, filled by {label}"
    raise DataUnavailableError(_advice(name, failures))


def _explicit_dir(name: str, data_dir: str | Path | None) -> tuple[Path, str] | None:
    """The ``data_dir`` argument, else ``$BNLIB_DATA``, with its ``<name>/`` subdirectory if any."""
    if data_dir is not None:
        root, label = Path(data_dir).expanduser(), "data_dir"
    elif os.environ.get("BNLIB_DATA"):
        root, label = Path(os.environ["BNLIB_DATA"]).expanduser(), "BNLIB_DATA"
    else:
        return None
    return (root / name if (root / name).is_dir() else root), label


def _cache_dir(name: str) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bnlib" / name


def _verified_dir(directory: Path, label: str, name: str, failures: list[str]) -> bool:
    """Whether all four files in the read-only ``directory`` pass; damaged ones are reported."""
    if not directory.is_dir():
        failures.append(f"{label} {directory}: no such directory")
        return False
    problems = _problems(directory, name)
    for filename, problem in problems.items():
        if problem != _MISSING:
            _warn(directory / filename, problem, f"Skipping {label} {directory}.")
    if problems:
        listed = "; ".join(f"{filename} {problem}" for filename, problem in problems.items())
        failures.append(f"{label} {directory}: {listed}")
    return not problems


def _lacking_in_cache(cache: Path, name: str) -> list[str]:
    """The files the cache lacks; damaged ones are reported, deleted and listed as lacking."""
    problems = _problems(cache, name)
    for filename, problem in problems.items():
        if problem != _MISSING:
            _warn(cache / filename, problem, "Deleted it; fetching it again.")
            (cache / filename).unlink(missing_ok=True)
    return list(problems)


def _problems(directory: Path, name: str) -> dict[str, str]:
    """For each file of ``name`` in ``directory`` that does not pass, why not."""
    problems = {f: _problem(directory / f, SHA256[name][f]) for f in FILENAMES}
    return {f: problem for f, problem in problems.items() if problem is not None}


def _problem(path: Path, expected: str) -> str | None:
    """Why ``path`` is not the file whose decompressed SHA-256 is ``expected``; None if it is."""
    if not path.is_file():
        return _MISSING
    try:
        actual = _sha256_decompressed(path)
    except (OSError, EOFError, zlib.error) as err:
        return f"cannot be decompressed ({err}); expected SHA-256 {expected}"
    if actual != expected:
        return f"has SHA-256 {actual}, expected {expected}"
    return None


def _sha256_decompressed(path: Path) -> str:
    """SHA-256 of the decompressed contents of a gzip file, streamed in 1 MiB chunks."""
    digest = hashlib.sha256()
    with gzip.open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _warn(path: Path, problem: str, action: str) -> None:
    warnings.warn(f"{path} {problem}. {action}", CorruptFileWarning, stacklevel=3)


def _advice(name: str, failures: list[str]) -> str:
    tried = "\n".join(f"  - {failure}" for failure in failures)
    fixes = [f"set BNLIB_DATA to a directory holding the four files ({', '.join(FILENAMES)})"]
    fixes.append(f"connect to the internet, then run: python -m bnlib.data {name}")
    if name == "fashion-mnist":
        fixes.insert(0, f"sudo apt-get install {DEB_PACKAGE}")
    fix = "\n".join(f"  - {line}" for line in fixes)
    return f"{name} is not available. Tried:\n{tried}\nFix it with one of:\n{fix}"


# ------------------------------------------------------------------------------- fetching

FetchStep = Callable[[Path, str, list[str]], None]


def _fetch_steps(name: str) -> list[tuple[str, FetchStep]]:
    """The sources that fill the cache, in order, each with a label for messages."""
    steps: list[tuple[str, FetchStep]] = []
    if name == "fashion-mnist":
        steps.append((f"apt-get download {DEB_PACKAGE}", _copy_from_deb))
    for mirror in MIRRORS.get(name, ()):
        steps.append((f"download from {mirror}", functools.partial(_download_from, mirror)))
    return steps


def _copy_from_deb(cache: Path, name: str, missing: list[str]) -> None:
    """Copy the ``missing`` files out of the downloaded .deb into the cache."""
    with tempfile.TemporaryDirectory() as scratch:
        unpacked = _fetch_deb(Path(scratch))
        for filename in list(missing):
            copy = functools.partial(shutil.copyfile, unpacked / filename)
            _install(cache / filename, SHA256[name][filename], copy)
            missing.remove(filename)


def _download_from(mirror: str, cache: Path, name: str, missing: list[str]) -> None:
    """Download the ``missing`` files from ``mirror`` into the cache."""
    for filename in list(missing):
        fetch = functools.partial(_download, mirror + filename)
        _install(cache / filename, SHA256[name][filename], fetch)
        missing.remove(filename)


def _install(final: Path, expected: str, write: Callable[[Path], object]) -> None:
    """Write a file through ``write(path)`` beside ``final``, verify it, rename it into place.

    The rename is atomic, so ``final`` is never a half-written or unverified file.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    handle, part_name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".part")
    os.close(handle)
    part = Path(part_name)
    try:
        write(part)
        problem = _problem(part, expected)
        if problem is not None:
            _warn(final, problem, "Not used.")
            raise ValueError(f"{final.name} {problem}")
        os.replace(part, final)
    finally:
        part.unlink(missing_ok=True)


def _download(url: str, dest: Path) -> None:
    """Stream ``url`` into ``dest`` with a progress bar."""
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response, open(dest, "wb") as out:
        size = int(response.headers.get("Content-Length") or 0) or None
        filename = url.rsplit("/", 1)[-1]
        with tqdm(total=size, unit="B", unit_scale=True, desc=filename, leave=False) as bar:
            while chunk := response.read(1 << 16):
                out.write(chunk)
                bar.update(len(chunk))


def _fetch_deb(dest: Path) -> Path:
    """Download and unpack the ``dataset-fashion-mnist`` .deb under ``dest`` (no root needed).

    Returns the unpacked directory that holds the four ``.gz`` files.
    """
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise RuntimeError("apt-get or dpkg-deb not found (not a Debian/Ubuntu system)")
    _run(["apt-get", "download", DEB_PACKAGE], cwd=dest)
    debs = sorted(dest.glob(f"{DEB_PACKAGE}_*.deb"))
    if not debs:
        raise RuntimeError("apt-get download gave no .deb file")
    _run(["dpkg-deb", "-x", str(debs[0]), str(dest / "root")], cwd=dest)
    return dest / "root" / DEB_DATA_DIR


def _run(command: list[str], cwd: Path) -> None:
    """Run ``command``; raise RuntimeError with its last line of error output if it fails."""
    try:
        done = subprocess.run(
            command, cwd=cwd, capture_output=True, text=True, timeout=APT_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{' '.join(command)} took over {APT_TIMEOUT:.0f} s") from None
    if done.returncode != 0:
        last_line = (done.stderr.strip().splitlines() or ["no error output"])[-1]
        raise RuntimeError(f"{' '.join(command)} failed: {last_line}")


# -------------------------------------------------------------------------------- parsing


@functools.cache
def _read_arrays(directory: Path) -> tuple[np.ndarray, ...]:
    """The four verified files of ``directory`` as uint8 arrays, parsed once per directory."""
    return tuple(_read_idx(directory / filename) for filename in FILENAMES)


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as stream:
        return _parse_idx(stream.read(), path.name)


def _parse_idx(raw: bytes, what: str = "IDX data") -> np.ndarray:
    """Parse unsigned-byte IDX data into a read-only uint8 array of the shape it declares.

    The header is a magic number ``0x0000 08 D`` (``0x08``: unsigned bytes, ``D``: the
    number of dimensions, 1 for labels, 3 for images), then ``D`` big-endian uint32 sizes.
    """
    magic = int.from_bytes(raw[:4], "big")
    if len(raw) < 4 or magic >> 8 != 0x000008:
        raise ValueError(
            f"{what}: bad magic number 0x{magic:08x}; expected 0x00000801 (labels) or "
            "0x00000803 (images), i.e. an unsigned-byte IDX file"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    shape = tuple(int(size) for size in np.frombuffer(raw[4:header], ">u4"))
    if len(shape) != ndim or len(raw) != header + int(np.prod(shape)):
        raise ValueError(
            f"{what}: {len(raw)} bytes do not match the header's shape {shape} "
            "(truncated or padded file)"
        )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def _to_float(images: np.ndarray, flatten: bool) -> np.ndarray:
    """uint8 images ``(N, 28, 28)`` to a new float32 array in [0, 1], ``(N, 784)`` if flattened."""
    out = images.astype(np.float32)
    out /= 255
    return out.reshape(len(out), -1) if flatten else out


# ------------------------------------------------------------------------------------ CLI


def main(argv: list[str] | None = None) -> int:
    """``python -m bnlib.data [name ...]``: make each dataset available, print where it is."""
    for name in argv or ["fashion-mnist"]:
        try:
            directory, how = _resolve(_canonical(name), None)
        except (DataUnavailableError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        print(f"{name}: {directory} ({how})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
