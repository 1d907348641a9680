"""Packaging: one version string, and the training layer's optional dependencies (matplotlib,
scikit-learn, tqdm), where a missing one gives an ImportError that names the package, what
needs it and the `train` extra."""
import importlib.metadata
import os
import re
import json
import sys

import pytest

import langevin_kernels as lk
from langevin_kernels._optional import pyplot, require


def test_installed_version_is_the_package_version():
    # pyproject.toml's version is dynamic, read from langevin_kernels.__version__ at build time.
    try:
        installed = importlib.metadata.version("langevin-kernels")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("langevin-kernels is not installed (running from a plain checkout)")
    assert installed == lk.__version__


def test_installed_module_is_returned():
    assert require("json", "the metrics file") is json


@pytest.mark.parametrize("module,dist", [("matplotlib.pyplot", "matplotlib"), ("sklearn.datasets", "scikit-learn"),
                                         ("tqdm", "tqdm")])
def test_missing_training_dependency_names_package_and_extra(monkeypatch, module, dist):
    # None in sys.modules makes the import fail as if the package were not installed.
    top = module.split(".")[0]
    monkeypatch.setitem(sys.modules, top, None)
    if module != top:
        monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.raises(ImportError, match=rf"the figures needs {dist}, which is not installed.*\[train\]"):
        require(module, "the figures")


def test_pyplot_is_file_only_and_names_the_extra_when_missing(monkeypatch):
    assert pyplot("the figures").get_backend().lower() == "agg"   # no screen on a training machine
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"the curves needs matplotlib.*\[train\]"):
        pyplot("the curves")


def test_broken_dependency_shows_its_own_error(monkeypatch, tmp_path):
    # The package is installed but one of its own imports is missing: that error is the useful
    # one, not advice to install the package.
    (tmp_path / "half_installed_pkg").mkdir()
    (tmp_path / "half_installed_pkg" / "__init__.py").write_text("import no_such_dependency_of_it\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_of_it") as info:
        require("half_installed_pkg", "the figures")
    assert "[train]" not in str(info.value)


def _layout_table():
    """The README's layout table: (first-column paths, whole table text)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    text = open(os.path.join(root, "README.md"), encoding="utf-8").read()
    table = text.split("## Layout", 1)[1].split("\n\n", 2)[1]
    paths = []
    for row in table.splitlines()[2:]:
        first = re.findall(r"`([^`]+)`", row.split("|")[1])
        base = os.path.dirname(first[0].rstrip("/")) if "/" in first[0].rstrip("/") else ""
        # `langevin_kernels/replay.py`, `schedules.py`: a bare name sits beside the first path
        paths += [p if ("/" in p or not base) else f"{base}/{p}" for p in first]
    return root, paths, table


def test_readme_layout_table_matches_the_tree():
    root, paths, table = _layout_table()
    missing = [p for p in paths if not os.path.exists(os.path.join(root, p))]
    assert not missing, f"README layout names paths that do not exist: {missing}"
    # Every module of the package and of the training layer is named somewhere in the table.
    modules = [f"langevin_kernels/{name}" for name in os.listdir(os.path.join(root, "langevin_kernels"))
               if name.endswith(".py") and name != "__init__.py"]
    modules += [f"train/{name}" for name in os.listdir(os.path.join(root, "train"))
                if name.endswith(".py") and name not in ("__init__.py", "__main__.py")]
    unnamed = [m for m in modules if f"`{os.path.basename(m)}`" not in table and f"`{m}`" not in table]
    assert not unnamed, f"modules missing from the README layout table: {unnamed}"
