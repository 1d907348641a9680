"""``python -m langevin_kernels.train`` = ``langevin-train``."""
import sys

from .cli import main

sys.exit(main())
