"""Fréchet distance: zero on itself, the closed form on Gaussians, errors named."""
import numpy as np
import pytest
import torch

from ardscale.metrics import feature_stats, frechet_distance, frechet_from_stats


def test_frechet_of_a_set_against_itself_is_zero():
    x = torch.randn(300, 16, generator=torch.Generator().manual_seed(0))
    assert frechet_distance(x, x) < 1e-8
    assert frechet_distance(x, x[torch.randperm(300)]) < 1e-8      # order does not matter


def test_frechet_equals_the_closed_form_on_gaussians():
    rng = np.random.default_rng(0)
    # Exact stats: diagonal covariances give ‖Δμ‖² + Σ (σa − σb)².
    mu_a, mu_b = np.array([0.0, 1.0, -2.0]), np.array([0.5, 1.0, 0.0])
    sd_a, sd_b = np.array([1.0, 2.0, 0.5]), np.array([2.0, 2.0, 1.5])
    closed = ((mu_a - mu_b) ** 2).sum() + ((sd_a - sd_b) ** 2).sum()
    assert frechet_from_stats(mu_a, np.diag(sd_a**2), mu_b, np.diag(sd_b**2)) == pytest.approx(closed, rel=1e-9)
    # A full covariance: against itself 0; against a scaled copy c²Σ it is (1 − c)² Tr Σ.
    A = rng.normal(size=(4, 4))
    cov = A @ A.T + np.eye(4)
    assert frechet_from_stats(np.zeros(4), cov, np.zeros(4), cov) == pytest.approx(0, abs=1e-8)
    assert frechet_from_stats(np.zeros(4), cov, np.zeros(4), 9 * cov) == pytest.approx(4 * np.trace(cov), rel=1e-9)
    # Samples converge to the closed form.
    a = rng.normal(mu_a, sd_a, size=(200_000, 3))
    b = rng.normal(mu_b, sd_b, size=(200_000, 3))
    assert frechet_distance(a, b) == pytest.approx(closed, rel=0.02)


def test_frechet_rejects_bad_shapes():
    with pytest.raises(ValueError, match="N >= 2"):
        feature_stats(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="feature sizes differ"):
        frechet_distance(np.random.rand(5, 3), np.random.rand(5, 4))
