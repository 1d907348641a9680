"""ReplayBuffer.update refuses NaN/inf states (a diverged chain would poison the buffer for good)."""
import pytest
import torch

from langevin_kernels.replay import ReplayBuffer


def _buffer(**kw):
    return ReplayBuffer(8, (2,), reinit_prob=0.0, init_fn=lambda n: torch.zeros(n, 2), seed=0, **kw)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_update_refuses_nonfinite_states_and_writes_nothing(bad):
    buf = _buffer()
    x, idx = buf.sample(4)
    states = torch.ones_like(x)
    states[2, 1] = bad
    before = buf.storage.clone()
    with pytest.raises(ValueError, match=rf"1 of 4 rows with NaN or inf \(rows \[2\], buffer indices "
                                         rf"\[{int(idx[2])}\]\).*Nothing was written"):
        buf.update(idx, states)
    assert torch.equal(buf.storage, before)


def test_update_accepts_finite_states():
    buf = _buffer()
    x, idx = buf.sample(4)
    buf.update(idx, x + 1.5)
    assert torch.equal(buf.storage[idx], torch.full((4, 2), 1.5))


def test_check_finite_false_stores_them():
    buf = _buffer(check_finite=False)
    _, idx = buf.sample(3)
    buf.update(idx, torch.full((3, 2), float("nan")))
    assert torch.isnan(buf.storage[idx]).all()
