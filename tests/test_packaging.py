"""The package as users install it (a wheel, as the Docker image does), not as a checkout."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.integration  # pip builds the wheel, fetching setuptools if need be


def test_the_wheel_holds_every_module(tmp_path: Path) -> None:
    # Built from a clean copy: setuptools would reuse a build/ directory left in the tree
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for tree in ("pubtasks", "tests"):  # the tests beside it, as in a checkout
        shutil.copytree(ROOT / tree, source / tree, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [wheel] = tmp_path.glob("pubtasks-*.whl")
    shipped = {name for name in zipfile.ZipFile(wheel).namelist() if name.startswith("pubtasks/")}
    sources = {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "pubtasks").rglob("*")
        if path.suffix in {".py", ".typed"}
    }
    assert sources <= shipped, sorted(sources - shipped)
    # and only the product: pubtasks and its bench, not the fault harness of the tests
    assert all(name.startswith("pubtasks") for name in zipfile.ZipFile(wheel).namelist())
    harness = {"chaos", "cluster", "nodes", "proxy", "ledger"}
    assert not {n for n in shipped if Path(n).stem in harness}, sorted(shipped)
