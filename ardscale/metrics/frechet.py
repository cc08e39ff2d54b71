"""Fréchet distance between two feature sets (FID, Heusel et al. 2017; FVD, Unterthiner et al. 2018).

``d² = ‖μ_a − μ_b‖² + Tr(Σ_a + Σ_b − 2 (Σ_a Σ_b)^½)`` with the sample means and the unbiased
covariances of the two sets, in float64, ``(Σ_a Σ_b)^½`` from ``scipy.linalg.sqrtm`` (as
pytorch-fid and StyleGAN-V compute it).
"""
from __future__ import annotations

import numpy as np
import scipy.linalg
import torch


def feature_stats(feats: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(C,)`` and unbiased covariance ``(C, C)`` float64 of features ``(N, C)``.

    Raises:
        ValueError: not 2-D, or fewer than 2 rows.
    """
    x = np.asarray(feats.detach().cpu() if isinstance(feats, torch.Tensor) else feats, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"features must be (N >= 2, C), got shape {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False)


def frechet_from_stats(mu_a: np.ndarray, cov_a: np.ndarray, mu_b: np.ndarray, cov_b: np.ndarray) -> float:
    """The Fréchet distance of two Gaussians ``N(mu_a, cov_a)``, ``N(mu_b, cov_b)`` (a float ≥ 0)."""
    covmean, _ = scipy.linalg.sqrtm(cov_a @ cov_b, disp=False)
    if not np.isfinite(covmean).all():   # singular product: nudge both diagonals, as pytorch-fid
        eps = np.eye(len(cov_a)) * 1e-6
        covmean = scipy.linalg.sqrtm((cov_a + eps) @ (cov_b + eps))
    covmean = covmean.real
    d = float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean))
    return max(d, 0.0)


def frechet_distance(feats_a: torch.Tensor | np.ndarray, feats_b: torch.Tensor | np.ndarray) -> float:
    """Fréchet distance between features ``(N, C)`` and ``(M, C)`` (float64 throughout).

    Raises:
        ValueError: a set not 2-D or with < 2 rows, or different C.
    """
    (mu_a, cov_a), (mu_b, cov_b) = feature_stats(feats_a), feature_stats(feats_b)
    if mu_a.shape != mu_b.shape:
        raise ValueError(f"feature sizes differ: {mu_a.shape[0]} vs {mu_b.shape[0]}")
    return frechet_from_stats(mu_a, np.atleast_2d(cov_a), mu_b, np.atleast_2d(cov_b))
