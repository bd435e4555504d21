"""The notebooks' setup cell, run for real in a simulated Colab and a fresh Jupyter.

Colab is simulated by a stand-in ``google.colab`` module and a fresh virtual environment
that has the book's dependencies (NumPy, PyTorch, ...) but not bnlib. The cell's
``pip install "bnlib @ git+<repository URL>"`` then really runs: git is told to fetch that
URL from this checkout instead of the network, so the test proves the cell installs a
working bnlib from the repository named in ``_config.yml``, without reaching GitHub.
Outside Colab, the same environment stands for a fresh Jupyter without bnlib: there the
cell must stop at once with one message saying what to run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from test_notebooks import colab_block

import bnlib

ROOT = Path(__file__).resolve().parents[1]
REPO_URL = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]


def setup_block(notebook: Path) -> str:
    """The notebook's setup block (its first code cell starts with it; test_notebooks checks)."""
    nb = json.loads(notebook.read_text())
    cell = "".join(next(c for c in nb["cells"] if c["cell_type"] == "code")["source"])
    block = colab_block(REPO_URL)
    assert cell.startswith(block)
    return block


@pytest.fixture(scope="module")
def colab(tmp_path_factory) -> dict:
    """A fake Colab: a venv without bnlib, a ``google.colab`` module, git redirected here."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs git and a git checkout of the book")
    tmp = tmp_path_factory.mktemp("colab")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    # The runtime's preinstalled packages (Colab ships NumPy, PyTorch, ...): this
    # environment's site-packages, linked entry by entry, all but bnlib's own.
    preinstalled = tmp / "preinstalled"
    preinstalled.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if "bnlib" not in entry.name:
            (preinstalled / entry.name).symlink_to(entry)
    query = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = subprocess.run([str(python), "-c", query], check=True, capture_output=True,
                          text=True).stdout.strip()
    Path(site, "preinstalled.pth").write_text(f"{preinstalled}\n")
    fake = tmp / "fake_colab"
    (fake / "google" / "colab").mkdir(parents=True)
    (fake / "google" / "__init__.py").write_text("")
    (fake / "google" / "colab" / "__init__.py").write_text('"""Stand-in for Colab."""\n')
    gitconfig = tmp / "gitconfig"
    gitconfig.write_text(f'[url "file://{ROOT}"]\n\tinsteadOf = {REPO_URL}\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(GIT_CONFIG_GLOBAL=str(gitconfig), GIT_CONFIG_NOSYSTEM="1",
               PYTHONPATH=str(fake), PIP_DISABLE_PIP_VERSION_CHECK="1")
    return {"python": python, "env": env, "cwd": tmp}


def test_without_the_cell_the_fake_colab_has_no_bnlib(colab):
    out = subprocess.run([str(colab["python"]), "-c", "import google.colab, torch, bnlib"],
                         env=colab["env"], cwd=colab["cwd"], capture_output=True, text=True)
    assert out.returncode != 0 and "No module named 'bnlib'" in out.stderr


def test_in_a_fresh_jupyter_the_cell_stops_saying_what_to_run(colab):
    # Runs before the Colab test below installs bnlib into the shared environment.
    env = {**colab["env"], "PYTHONPATH": ""}  # no google.colab: not Colab
    for notebook in (ROOT / "notebooks" / "03_bn_algorithm.ipynb",
                     ROOT / "book" / "03_bn_algorithm.ipynb"):
        out = subprocess.run([str(colab["python"]), "-c", setup_block(notebook)], env=env,
                             cwd=colab["cwd"], capture_output=True, text=True, timeout=120)
        assert out.returncode != 0
        last = out.stderr.strip().splitlines()[-1]
        assert last.startswith("ModuleNotFoundError: This notebook needs bnlib"), last
        assert f'%pip install "bnlib @ git+{REPO_URL}"' in last, last


def test_setup_cell_installs_bnlib_from_the_repository_on_colab(colab):
    cell = setup_block(ROOT / "book" / "03_bn_algorithm.ipynb")
    check = textwrap.dedent("""
        import bnlib, bnlib.reference, bnlib.torch_bn
        assert "site-packages" in bnlib.__file__, bnlib.__file__
        print("installed at", bnlib.__file__)
        print("device", bnlib.device())
    """)
    startup = "import google.colab  # Colab's kernel has imported it before any cell runs\n"
    out = subprocess.run([str(colab["python"]), "-c", startup + cell + check], env=colab["env"],
                         cwd=colab["cwd"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "installed at" in out.stdout and str(ROOT) not in out.stdout
    assert "device cpu" in out.stdout or "device cuda" in out.stdout


def test_on_a_gpu_runtime_the_notebooks_pick_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert bnlib.device().type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bnlib.device().type == "cpu"
