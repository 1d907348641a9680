"""Every ```python block of the README runs as written, in order, in one namespace (a pasted
example that fails is a bug: issue 17 item 9)."""
import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_readme_python_blocks_run_as_written(one_thread):
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 4   # the op, the noise stream, backends, samplers
    namespace: dict = {}
    import langevin_kernels as lk
    previous = lk.get_backend()
    try:
        for i, block in enumerate(blocks):
            torch.manual_seed(0)
            exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)
    finally:
        lk.set_backend(previous)
