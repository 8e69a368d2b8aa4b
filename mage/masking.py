"""Masking-ratio distribution and token masks used in MAGE training."""
from __future__ import annotations

import math

import torch


def _phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def truncnorm_pdf(x, mu: float, std: float, lo: float, hi: float):
    """Density of N(mu, std^2) truncated to [lo, hi] (numpy/torch arrays or floats)."""
    z = _phi((hi - mu) / std) - _phi((lo - mu) / std)
    import numpy as np
    x = np.asarray(x, dtype=np.float64)
    pdf = np.exp(-0.5 * ((x - mu) / std) ** 2) / (std * math.sqrt(2 * math.pi) * z)
    return np.where((x >= lo) & (x <= hi), pdf, 0.0)


def sample_mask_ratio(config, n: int | None = None, generator: torch.Generator | None = None):
    """Draw masking ratio(s) from N(mu, std^2) truncated to [min, max] by inverse-CDF sampling.

    ``config`` is any object with mask_ratio_{min,max,mu,std}. Returns a float (n=None) or a float64
    tensor of n draws.
    """
    mu, std = config.mask_ratio_mu, config.mask_ratio_std
    lo, hi = config.mask_ratio_min, config.mask_ratio_max
    if std <= 0 or lo >= hi:
        r = torch.full((n or 1,), float(min(max(mu, lo), hi)), dtype=torch.float64)
    else:
        a, b = _phi((lo - mu) / std), _phi((hi - mu) / std)
        u = a + (b - a) * torch.rand(n or 1, generator=generator, dtype=torch.float64)
        r = (mu + std * math.sqrt(2.0) * torch.erfinv(2 * u - 1)).clamp(lo, hi)
    return float(r[0]) if n is None else r


def random_masks(noise: torch.Tensor, n_drop: int, n_mask: int):
    """Per row, the n_drop smallest noise positions are dropped and the n_mask smallest masked.

    Returns (drop, mask) bool [B,N]; drop is a subset of mask. Ties are assumed absent (continuous
    noise); the official code re-draws noise in that case.
    """
    if not 0 <= n_drop <= n_mask <= noise.shape[1]:
        raise ValueError(f"need 0 <= n_drop ({n_drop}) <= n_mask ({n_mask}) <= {noise.shape[1]}")
    srt = noise.sort(dim=1).values

    def below(n):
        if n == 0:
            return torch.zeros_like(noise, dtype=torch.bool)
        return noise <= srt[:, n - 1: n]

    return below(n_drop), below(n_mask)
