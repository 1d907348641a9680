"""Imports of the training layer's optional dependencies, with an error that says how to get them.

The kernels and samplers need only torch and numpy. matplotlib (figures), scikit-learn (the
digits data set) and tqdm (progress bars) belong to the training layer and come with the
``train`` extra; the training code imports them through ``require`` at the point of use:

    plt = require("matplotlib.pyplot", "the training figures")
"""
from __future__ import annotations

import importlib
from types import ModuleType

# The pip distribution that provides each optional top-level module.
DISTRIBUTIONS = {"matplotlib": "matplotlib", "sklearn": "scikit-learn", "tqdm": "tqdm"}
INSTALL_HINT = "pip install 'langevin-kernels[train]' (or, in a checkout, pip install -e '.[train]')"


def require(module: str, purpose: str) -> ModuleType:
    """Import and return `module` (e.g. "matplotlib.pyplot"); if its package is not installed,
    raise ImportError naming the package, what needs it (`purpose`) and how to install it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        top = module.split(".")[0]
        if err.name is None or err.name.split(".")[0] != top:
            raise  # the package is there but one of its own imports failed: show that error
        dist = DISTRIBUTIONS.get(top, top)
        raise ImportError(f"{purpose} needs {dist}, which is not installed; it is a dependency of the "
                          f"training layer: {INSTALL_HINT}") from err


def pyplot(purpose: str) -> ModuleType:
    """matplotlib.pyplot on the file-only Agg backend (training runs have no screen), through `require`."""
    matplotlib = require("matplotlib", purpose)
    matplotlib.use("Agg")
    return require("matplotlib.pyplot", purpose)
