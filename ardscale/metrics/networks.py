"""The standard feature networks of FVD and FID, loaded from local TorchScript files (no download).

FVD (Unterthiner et al. 2018) as StyleGAN-V computes it (Skorokhodov et al. 2022,
``src/metrics/frechet_video_distance.py``): the I3D Kinetics-400 network exported to TorchScript
(``i3d_torchscript.pt``), called as ``detector(videos, rescale=False, resize=True,
return_features=True)`` on float32 videos ``(N, 3, T, H, W)`` in [-1, 1]; the network resizes
frames to 224² itself and returns 400 features (the logits layer, before the softmax). The paper's
FVD16 takes 16 consecutive frames per video, FVD128 128 frames, 2,048 videos a side (StyleGAN-V's
``fvd2048_16f`` / ``fvd2048_128f``); clips start at frame 0 here.

FID (Heusel et al. 2017) as StyleGAN2-ADA computes it (``metrics/frechet_inception_distance.py``):
the TF Inception-v3 graph exported to TorchScript (``inception-2015-12-05.pt``), called as
``detector(images, return_features=True)`` on uint8 images ``(N, 3, H, W)``; it resizes to 299²
and returns the 2,048 pool features. FID-img samples frames of the videos as images; FID-vid
(the paper's Table 1) averages over frames of the generated videos as well.

Both return float64 features on the CPU; :func:`ardscale.metrics.frechet_distance` compares them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def _load_script(path: str, what: str, key: str) -> torch.jit.ScriptModule:
    if not path:
        raise FileNotFoundError(f"{key} is not set: give the path of the {what} TorchScript file "
                                "(nothing is downloaded)")
    if not Path(path).is_file():
        raise FileNotFoundError(f"{key}={path}: no such file (the {what} TorchScript file)")
    try:
        return torch.jit.load(path, map_location="cpu").eval()
    except RuntimeError as e:
        raise ValueError(f"{key}={path} is not a TorchScript file: {e}") from e


class _ScriptFeatures:
    """A TorchScript feature network applied in batches; float64 features on the CPU."""

    what, default_key, default_batch = "", "", 16

    def __init__(self, path: str, device: str = "cpu", key: str | None = None, batch_size: int | None = None):
        self.net = _load_script(path, self.what, key or self.default_key).to(device)
        self.device, self.batch_size = device, batch_size or self.default_batch

    def _features(self, chunk: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        chunks = torch.as_tensor(x).split(self.batch_size)
        return torch.cat([self._features(c.to(self.device)).double().cpu() for c in chunks])


class I3DFeatures(_ScriptFeatures):
    """FVD's I3D features of uint8 videos ``(N, T, H, W, 3)`` → float64 ``(N, 400)``.

    Raises:
        FileNotFoundError / ValueError: at load, a missing or non-TorchScript file (named).
    """

    what, default_key = "I3D Kinetics-400 (i3d_torchscript.pt)", "metrics.i3d"

    def _features(self, chunk: torch.Tensor) -> torch.Tensor:
        x = chunk.permute(0, 4, 1, 2, 3).float() / 127.5 - 1                            # (n, 3, T, H, W)
        return self.net(x, rescale=False, resize=True, return_features=True)


class InceptionFeatures(_ScriptFeatures):
    """FID's Inception-v3 pool features of uint8 frames ``(N, H, W, 3)`` → float64 ``(N, 2048)``.

    Raises:
        FileNotFoundError / ValueError: at load, a missing or non-TorchScript file (named).
    """

    what, default_key, default_batch = "Inception-v3 (inception-2015-12-05.pt)", "metrics.inception", 64

    def _features(self, chunk: torch.Tensor) -> torch.Tensor:
        return self.net(chunk.permute(0, 3, 1, 2).contiguous(), return_features=True)
