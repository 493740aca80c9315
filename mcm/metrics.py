"""Distribution distances shared by the toy metrics and the evaluation tools (pure torch).

The Fréchet distance between Gaussians fitted to two feature sets is the core of FID and FVD:
``|μ1 − μ2|² + tr(Σ1 + Σ2 − 2 (Σ1^½ Σ2 Σ1^½)^½)``. It is computed in float64 with symmetric
eigendecompositions (the product under the root is symmetric positive semi-definite in this form), so
no SciPy is needed and the result is real by construction.
"""

from __future__ import annotations

import torch


def feature_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (unbiased) covariance of ``[n, d]`` features, in float64."""
    x = torch.as_tensor(features).double()
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"features must be [n >= 2, d], got shape {tuple(x.shape)}")
    return x.mean(0), torch.atleast_2d(torch.cov(x.T))


def _sqrt_psd(m: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh((m + m.T) / 2)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2 = torch.as_tensor(mu1).double(), torch.as_tensor(mu2).double()
    sigma1, sigma2 = (
        torch.atleast_2d(torch.as_tensor(sigma1).double()),
        torch.atleast_2d(torch.as_tensor(sigma2).double()),
    )
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.numel(), mu1.numel()):
        raise ValueError(
            f"shapes do not match: mu {tuple(mu1.shape)} / {tuple(mu2.shape)}, "
            f"sigma {tuple(sigma1.shape)} / {tuple(sigma2.shape)}"
        )
    root1 = _sqrt_psd(sigma1)
    cross = _sqrt_psd(root1 @ sigma2 @ root1)
    value = (mu1 - mu2).square().sum() + torch.trace(sigma1) + torch.trace(sigma2) - 2 * torch.trace(cross)
    return float(value.clamp(min=0))


def frechet_distance_of(features1: torch.Tensor, features2: torch.Tensor) -> float:
    """Fréchet distance between the Gaussians fitted to two ``[n, d]`` feature sets."""
    return frechet_distance(*feature_stats(features1), *feature_stats(features2))
