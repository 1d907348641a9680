"""Lets `pytest benchmarks/ --benchmark-only` import the suites from the checkout."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
