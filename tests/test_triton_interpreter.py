"""The Triton kernels on CPU: every CPU triton case of the op, noise, op-property and kinetic tests,
rerun in a subprocess with TRITON_INTERPRET=1 (the variable must be set before triton's @jit
definitions execute, so it cannot be switched on in-process). Every one of them must pass
there: a skip (the backend not running after all) or a missing case fails this test."""
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
FILES = ("test_noise.py", "test_ops.py", "test_op_properties.py", "test_kinetic.py")
# The CPU triton cases: ids "cpu-triton" (tests/backends.py) or "triton" (conftest's
# cpu_backend); `not gpu` leaves out the CUDA ones (the gpu mark is a keyword).
SELECT = "triton and not gpu"


def _pytest(args, env, timeout):
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-k", SELECT, *args, *FILES]
    return subprocess.run(cmd, cwd=TESTS_DIR, env=env, capture_output=True, text=True, timeout=timeout)


def _collected_ids(env):
    """(module, test name with parameters) of every selected case, as collection sees them."""
    proc = _pytest(["--collect-only", "-q"], env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ids = set()
    for line in proc.stdout.splitlines():
        if "::" in line:
            path, name = line.split("::", 1)
            ids.add((os.path.basename(path).removesuffix(".py"), name))
    return ids


def _passed_ids(junit_path):
    """(module, name) of every case that passed in the junit report, and a list of the others."""
    passed, other = set(), []
    for case in ET.parse(junit_path).getroot().iter("testcase"):
        key = (case.get("classname").split(".")[-1], case.get("name"))
        outcome = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        (other.append((key, outcome)) if outcome else passed.add(key))
    return passed, other


@pytest.mark.slow  # ~80 s on two loaded cores: ~150 cases at ~50 ms per interpreted kernel call
@pytest.mark.interpreter
def test_triton_cases_pass_under_the_interpreter(tmp_path):
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    expected = _collected_ids(env)
    # Each file contributes cases, so a renamed id or a lost parametrization cannot empty it.
    assert {module for module, _ in expected} == {f.removesuffix(".py") for f in FILES}, expected
    junit = tmp_path / "interpreter.xml"
    proc = _pytest(["-q", f"--junitxml={junit}"], env, timeout=1200)
    tail = proc.stdout[-6000:] + proc.stderr[-3000:]
    passed, other = _passed_ids(junit)
    assert not other, f"not passed under the interpreter: {other}\n{tail}"
    assert passed == expected, f"missing: {sorted(expected - passed)}; unexpected: {sorted(passed - expected)}"
    assert proc.returncode == 0, tail
