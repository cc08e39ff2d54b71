"""Distances between two feature sets: the Fréchet distance (FID, Heusel et al. 2017; FVD,
Unterthiner et al. 2018) and the kernel distance (KID, Bińkowski et al. 2018; KVD for video).

Fréchet: ``d² = ‖μ_a − μ_b‖² + Tr(Σ_a) + Tr(Σ_b) − 2 Tr((Σ_a Σ_b)^½)`` with the sample means and
unbiased covariances, in float64. ``Tr((Σ_a Σ_b)^½)`` is computed as ``Σ √λ_i`` over the eigenvalues
of the symmetric PSD matrix ``Σ_a^½ Σ_b Σ_a^½`` (same spectrum as ``Σ_a Σ_b``), from two symmetric
eigen-decompositions: unlike ``scipy.linalg.sqrtm`` (its ``disp`` argument is gone in SciPy 1.18)
it has no imaginary part to drop. Negative eigenvalues are round-off; a non-negligible one (the
analogue of sqrtm's imaginary part) is warned about.

Kernel distance: the unbiased MMD² with the cubic polynomial kernel ``k(x, y) = (x·y / C + 1)³``,
averaged over ``subsets`` random subsets of ``subset_size`` rows per side (StyleGAN2-ADA's
``metrics/kernel_inception_distance.py``); mean and standard deviation over subsets. It is unbiased
at any sample size, where the Fréchet distance grows as the sample shrinks.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch


def _as_array(feats) -> np.ndarray:
    x = np.asarray(feats.detach().cpu() if isinstance(feats, torch.Tensor) else feats, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"features must be (N >= 2, C), got shape {x.shape}")
    return x


def feature_stats(feats: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(C,)`` and unbiased covariance ``(C, C)`` float64 of features ``(N, C)``.

    Raises:
        ValueError: not 2-D, or fewer than 2 rows.
    """
    x = _as_array(feats)
    return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))


def _psd_sqrt(cov: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((cov + cov.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def trace_sqrt_product(cov_a: np.ndarray, cov_b: np.ndarray, tol: float = 1e-6) -> float:
    """``Tr((Σ_a Σ_b)^½)`` of two covariances (see the module docstring); warns when the product
    has a negative eigenvalue beyond ``tol`` × its largest (an ill-conditioned or non-PSD input)."""
    s = _psd_sqrt(cov_a)
    lam = np.linalg.eigvalsh(s @ cov_b @ s)
    if len(lam) and lam.min() < -tol * max(abs(lam.max()), 1e-300):
        warnings.warn(f"Fréchet distance: Σ_a Σ_b has a negative eigenvalue {lam.min():.3g} (largest "
                      f"{lam.max():.3g}); its square root would be complex", RuntimeWarning, stacklevel=3)
    return float(np.sqrt(np.clip(lam, 0, None)).sum())


def frechet_from_stats(mu_a: np.ndarray, cov_a: np.ndarray, mu_b: np.ndarray, cov_b: np.ndarray) -> float:
    """The Fréchet distance of two Gaussians ``N(mu_a, cov_a)``, ``N(mu_b, cov_b)`` (a float ≥ 0).

    Raises:
        ValueError: different feature sizes.
    """
    if mu_a.shape != mu_b.shape or cov_a.shape != cov_b.shape:
        raise ValueError(f"feature sizes differ: {mu_a.shape[0]} vs {mu_b.shape[0]}")
    d = ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt_product(cov_a, cov_b)
    return max(float(d), 0.0)


def frechet_distance(feats_a: torch.Tensor | np.ndarray, feats_b: torch.Tensor | np.ndarray) -> float:
    """Fréchet distance between features ``(N, C)`` and ``(M, C)`` (float64 throughout).

    Raises:
        ValueError: a set not 2-D or with < 2 rows, or different C.
    """
    return frechet_from_stats(*feature_stats(feats_a), *feature_stats(feats_b))


def kernel_distance(feats_a, feats_b, subsets: int = 100, subset_size: int = 1000,
                    seed: int = 0) -> tuple[float, float]:
    """Unbiased polynomial-kernel MMD² between features ``(N, C)`` and ``(M, C)``: ``(mean, std)``
    over ``subsets`` random subsets of ``min(N, M, subset_size)`` rows per side (KID / KVD; half
    of the smaller set when that is smaller than ``subset_size``, so that the subsets differ).

    Raises:
        ValueError: a set not 2-D or with < 2 rows, or different C.
    """
    a, b = _as_array(feats_a), _as_array(feats_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sizes differ: {a.shape[1]} vs {b.shape[1]}")
    c, m = a.shape[1], min(len(a), len(b), subset_size)
    if m == min(len(a), len(b)) and subsets > 1:   # subsets of every row would all be equal: std 0
        m = max(2, m // 2)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx, kyy, kxy = ((p @ q.T / c + 1) ** 3 for p, q in ((x, x), (y, y), (x, y)))
        off = lambda k: (k.sum() - np.trace(k)) / (m * (m - 1))
        values.append(off(kxx) + off(kyy) - 2 * kxy.mean())
    return float(np.mean(values)), float(np.std(values))
