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


class StandInI3D(torch.nn.Module):
    """The interface of StyleGAN-V's i3d_torchscript.pt, random weights."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 400)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        assert x.dim() == 5 and x.shape[1] == 3 and float(x.min()) >= -1.0 and float(x.max()) <= 1.0
        return self.fc(x.mean(dim=(2, 3, 4)))


class StandInInception(torch.nn.Module):
    """The interface of StyleGAN2-ADA's inception-2015-12-05.pt (uint8 NCHW in), random weights."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 2048)

    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        assert img.dtype == torch.uint8 and img.shape[1] == 3
        return self.fc(img.float().mean(dim=(2, 3)) / 255)


def test_standard_feature_networks_load_from_torchscript_files(tmp_path):
    from ardscale.metrics.networks import I3DFeatures, InceptionFeatures

    torch.jit.script(StandInI3D()).save(str(tmp_path / "i3d_torchscript.pt"))
    torch.jit.script(StandInInception()).save(str(tmp_path / "inception-2015-12-05.pt"))
    videos = torch.randint(0, 256, (5, 4, 16, 16, 3), dtype=torch.uint8)
    f = I3DFeatures(str(tmp_path / "i3d_torchscript.pt"), batch_size=2)(videos)
    assert f.shape == (5, 400) and f.dtype == torch.float64
    g = InceptionFeatures(str(tmp_path / "inception-2015-12-05.pt"), batch_size=3)(videos[:, 0])
    assert g.shape == (5, 2048) and g.dtype == torch.float64
    assert frechet_distance(f, f) < 1e-6
    with pytest.raises(FileNotFoundError, match="metrics.i3d is not set"):
        I3DFeatures("")
    with pytest.raises(FileNotFoundError, match="metrics.inception=/nope.pt: no such file"):
        InceptionFeatures("/nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not torchscript")
    with pytest.raises(ValueError, match="not a TorchScript file"):
        I3DFeatures(str(tmp_path / "junk.pt"))
