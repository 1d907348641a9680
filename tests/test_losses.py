"""lk.losses.contrastive_divergence_loss: the formula, its gradient, argument checks."""
import pytest
import torch

from langevin_kernels.losses import contrastive_divergence_loss


def test_value_and_gradient():
    e_data = torch.tensor([1.0, 3.0], requires_grad=True)
    e_samples = torch.tensor([0.5, -0.5], requires_grad=True)
    loss = contrastive_divergence_loss(e_data, e_samples, temperature=0.5, energy_reg=0.1)
    # gap (2 - 0) / 0.5 = 4; reg 0.1 * (mean(1, 9) + mean(0.25, 0.25)) = 0.1 * (5 + 0.25)
    assert loss.item() == pytest.approx(4 + 0.525)
    loss.backward()
    # d/d e_data_i = 1 / (T B) + reg * 2 e_i / B; d/d e_samples_i = -1 / (T B) + reg * 2 e_i / B
    assert torch.allclose(e_data.grad, torch.tensor([1.0 + 0.1, 1.0 + 0.3]))
    assert torch.allclose(e_samples.grad, torch.tensor([-1.0 + 0.05, -1.0 - 0.05]))


def test_unequal_batches_add_the_two_means():
    loss = contrastive_divergence_loss(torch.tensor([2.0]), torch.tensor([1.0, 3.0]), energy_reg=1.0)
    assert loss.item() == pytest.approx((2 - 2) + (4 + 5))


def test_same_as_the_trainer_formula_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, generator=g), torch.randn(64, generator=g)
    expected = (a.mean() - b.mean()) / 4e-6 + 0.1 * (a.pow(2) + b.pow(2)).mean()
    assert torch.equal(contrastive_divergence_loss(a, b, temperature=4e-6, energy_reg=0.1), expected)


@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=0.0), "temperature=0.0 is out of range; allowed: a finite number > 0"),
    (dict(temperature=float("nan")), "temperature=nan"),
    (dict(energy_reg=-1.0), "energy_reg=-1.0 is out of range; allowed: a finite number >= 0"),
    (dict(energy_reg=True), "energy_reg=True")])
def test_bad_numbers_named(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        contrastive_divergence_loss(torch.zeros(2), torch.zeros(2), **kwargs)


def test_bad_energies_named():
    with pytest.raises(TypeError, match="energy_samples must be a floating-point tensor .* got list"):
        contrastive_divergence_loss(torch.zeros(2), [0.0, 1.0])
    with pytest.raises(TypeError, match="energy_data must be .* got a torch.int64 tensor"):
        contrastive_divergence_loss(torch.zeros(2, dtype=torch.long), torch.zeros(2))
    with pytest.raises(ValueError, match="energy_data is empty"):
        contrastive_divergence_loss(torch.zeros(0), torch.zeros(2))


def test_the_trainer_computes_its_ebm_loss_with_it(monkeypatch):
    from langevin_kernels.train import methods
    from langevin_kernels.train.config import preset

    calls = []

    def spy(e_data, e_samples, **kw):
        calls.append(kw)
        return contrastive_divergence_loss(e_data, e_samples, **kw)

    monkeypatch.setattr(methods, "contrastive_divergence_loss", spy)
    cfg = preset("toy2d", method="shortrun", sr_steps=2, batch_size=8)
    method = methods.build_method(cfg, "cpu", (2,))
    method.train_step(torch.zeros(8, 2))
    assert calls == [dict(temperature=method.temperature, energy_reg=cfg.energy_reg)]
