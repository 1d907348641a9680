"""Sampling targets with known answers, to validate samplers.

Each target is an object with
    dim                     number of coordinates
    energy(x) -> [B]        E(x) = -log p(x) up to a constant, differentiable, for x of shape [B, dim]
    mean, var               exact mean and variance of each coordinate (float64 tensors [dim])
    sample(n, generator)    exact independent draws, [n, dim] float64
    jax_energy()            the same energy written in jax.numpy (x [B, dim] -> [B]), for peer
                            libraries that differentiate with JAX (jax is imported only here)

The moments follow from how each density is built, not from numerical integration, so a
sampler's bias can be measured against them directly.
"""
import math

import torch


def _jnp():
    import jax.numpy as jnp  # an optional peer: imported only when a JAX port is asked for
    return jnp

__all__ = ["IllConditionedGaussian", "NealsFunnel", "Banana", "GaussianMixture2D"]


class IllConditionedGaussian:
    """N(m, C) in `dim` dimensions with condition number `condition` of C.

    C = Q diag(v) Q^T with variances v log-spaced from 1/condition to 1 and Q a fixed random
    rotation (seeded), so the badly scaled directions are not the coordinate axes.
    """

    def __init__(self, dim=10, condition=100.0, seed=0):
        gen = torch.Generator().manual_seed(seed)
        self.dim = dim
        q, r = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64))
        self.rotation = q * torch.sign(torch.diagonal(r))  # sign fix makes Q unique for the seed
        self.eigenvalues = torch.logspace(-math.log10(condition), 0.0, dim, dtype=torch.float64)
        self.loc = torch.linspace(-1.0, 1.0, dim, dtype=torch.float64)
        self.covariance = self.rotation @ torch.diag(self.eigenvalues) @ self.rotation.T
        self.precision = self.rotation @ torch.diag(1.0 / self.eigenvalues) @ self.rotation.T
        self.mean = self.loc.clone()
        self.var = torch.diagonal(self.covariance).clone()

    def energy(self, x):
        d = x - self.loc.to(x)
        return 0.5 * ((d @ self.precision.to(x)) * d).sum(-1)

    def jax_energy(self):
        jnp = _jnp()
        loc, precision = jnp.asarray(self.loc.numpy()), jnp.asarray(self.precision.numpy())

        def energy(x):
            d = x - loc.astype(x.dtype)
            return 0.5 * jnp.sum((d @ precision.astype(x.dtype)) * d, axis=-1)
        return energy

    def sample(self, n, generator=None):
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.loc + (z * self.eigenvalues.sqrt()) @ self.rotation.T


class NealsFunnel:
    """Neal's funnel: v ~ N(0, scale^2), x_i | v ~ N(0, exp(v)) for i = 1..dim-1; coordinate 0 is v.

    Exact moments: all means 0, var(v) = scale^2, var(x_i) = E[exp(v)] = exp(scale^2 / 2)
    (the log-normal mean). The neck (v << 0) needs steps about exp(v/2) wide and the mouth
    (v >> 0) allows steps far wider, so no single step size suits the whole target.
    """

    def __init__(self, dim=10, scale=3.0):
        self.dim = dim
        self.scale = scale
        self.mean = torch.zeros(dim, dtype=torch.float64)
        self.var = torch.full((dim,), math.exp(scale ** 2 / 2), dtype=torch.float64)
        self.var[0] = scale ** 2

    def energy(self, x):
        v, rest = x[:, 0], x[:, 1:]
        n = rest.shape[1]
        return v ** 2 / (2 * self.scale ** 2) + 0.5 * torch.exp(-v) * (rest ** 2).sum(-1) + 0.5 * n * v

    def jax_energy(self):
        jnp, scale = _jnp(), self.scale

        def energy(x):
            v, rest = x[:, 0], x[:, 1:]
            n = rest.shape[1]
            return v ** 2 / (2 * scale ** 2) + 0.5 * jnp.exp(-v) * jnp.sum(rest ** 2, axis=-1) + 0.5 * n * v
        return energy

    def sample(self, n, generator=None):
        v = self.scale * torch.randn(n, 1, generator=generator, dtype=torch.float64)
        rest = torch.randn(n, self.dim - 1, generator=generator, dtype=torch.float64) * torch.exp(v / 2)
        return torch.cat([v, rest], dim=1)


class Banana:
    """Haario's twisted Gaussian in 2-D: z1 ~ N(0, s^2), z2 ~ N(0, 1), x1 = z1, x2 = z2 + b (z1^2 - s^2).

    The map z -> x has Jacobian 1, so E(x) = x1^2 / (2 s^2) + (x2 - b (x1^2 - s^2))^2 / 2.
    Exact moments: means 0 (E[z1^2] = s^2), var(x1) = s^2, var(x2) = 1 + b^2 var(z1^2) = 1 + 2 b^2 s^4.
    """

    def __init__(self, s=10.0, b=0.03):
        self.dim = 2
        self.s, self.b = s, b
        self.mean = torch.zeros(2, dtype=torch.float64)
        self.var = torch.tensor([s ** 2, 1 + 2 * b ** 2 * s ** 4], dtype=torch.float64)

    def energy(self, x):
        x1, x2 = x[:, 0], x[:, 1]
        return x1 ** 2 / (2 * self.s ** 2) + 0.5 * (x2 - self.b * (x1 ** 2 - self.s ** 2)) ** 2

    def jax_energy(self):
        s, b = self.s, self.b

        def energy(x):
            x1, x2 = x[:, 0], x[:, 1]
            return x1 ** 2 / (2 * s ** 2) + 0.5 * (x2 - b * (x1 ** 2 - s ** 2)) ** 2
        return energy

    def sample(self, n, generator=None):
        z = torch.randn(n, 2, generator=generator, dtype=torch.float64)
        z1 = self.s * z[:, 0]
        return torch.stack([z1, z[:, 1] + self.b * (z1 ** 2 - self.s ** 2)], dim=1)


class GaussianMixture2D:
    """Equal-weight mixture of N((-m, 0), sigma^2 I) and N((m, 0), sigma^2 I).

    Exact moments (law of total variance): means 0, var(x1) = sigma^2 + m^2, var(x2) = sigma^2.
    """

    def __init__(self, separation=2.0, sigma=1.0):
        self.dim = 2
        self.m, self.sigma = separation, sigma
        self.centers = torch.tensor([[-separation, 0.0], [separation, 0.0]], dtype=torch.float64)
        self.mean = torch.zeros(2, dtype=torch.float64)
        self.var = torch.tensor([sigma ** 2 + separation ** 2, sigma ** 2], dtype=torch.float64)

    def energy(self, x):
        sq = ((x[:, None, :] - self.centers.to(x)) ** 2).sum(-1)  # [B, 2]
        return -torch.logsumexp(-sq / (2 * self.sigma ** 2), dim=1)

    def jax_energy(self):
        import jax.scipy.special
        jnp, sigma = _jnp(), self.sigma
        centers = jnp.asarray(self.centers.numpy())

        def energy(x):
            sq = jnp.sum((x[:, None, :] - centers.astype(x.dtype)) ** 2, axis=-1)
            return -jax.scipy.special.logsumexp(-sq / (2 * sigma ** 2), axis=1)
        return energy

    def sample(self, n, generator=None):
        pick = torch.randint(0, 2, (n,), generator=generator)
        return self.centers[pick] + self.sigma * torch.randn(n, 2, generator=generator, dtype=torch.float64)
