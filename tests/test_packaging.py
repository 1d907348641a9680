"""Packaging: one version string, and the training layer's optional dependencies (matplotlib,
scikit-learn, tqdm), where a missing one gives an ImportError that names the package, what
needs it and the `train` extra."""
import importlib.metadata
import json
import sys

import pytest

import langevin_kernels as lk
from langevin_kernels._optional import require


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


def test_broken_dependency_shows_its_own_error(monkeypatch, tmp_path):
    # The package is installed but one of its own imports is missing: that error is the useful
    # one, not advice to install the package.
    (tmp_path / "half_installed_pkg").mkdir()
    (tmp_path / "half_installed_pkg" / "__init__.py").write_text("import no_such_dependency_of_it\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_of_it") as info:
        require("half_installed_pkg", "the figures")
    assert "[train]" not in str(info.value)
