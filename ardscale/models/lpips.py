"""LPIPS perceptual distance (Zhang et al. 2018, VGG16 variant): the "perceptual" part of the
AR-VAE reconstruction loss (paper Sec. 4.1 follows LDM [23]: L1 + LPIPS).

Nothing can be downloaded at run time, so the weights come from two files the user provides:
torchvision's ``vgg16`` ``state_dict`` (keys ``features.N.weight``) and LPIPS v0.1's ``vgg.pth``
(keys ``linK.model.1.weight``). The network is written out here because there is no CPU
torchvision wheel to take VGG16 from.
"""
from __future__ import annotations

import torch
from torch import nn

# torchvision vgg16 "features": conv widths, "M" = max-pool. LPIPS taps relu1_2 … relu5_3.
_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
_TAPS = (3, 8, 15, 22, 29)          # indices of those ReLUs in `features`
_CHANNELS = (64, 128, 256, 512, 512)


def vgg16_features() -> nn.Sequential:
    """VGG16 conv trunk with torchvision's module indices (so its state_dict loads as is)."""
    layers, c = [], 3
    for v in _VGG16:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=False)]
            c = v
    return nn.Sequential(*layers)


class LPIPS(nn.Module):
    """``forward(x, y)``: images ``(N, 3, H, W)`` in [-1, 1] → distance ``(N,)`` (0 for x == y).

    Frozen: parameters have ``requires_grad=False``; gradients flow to the inputs only.
    """

    def __init__(self):
        super().__init__()
        self.features = vgg16_features()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in _CHANNELS)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None])
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_files(cls, vgg_path: str, lin_path: str) -> LPIPS:
        """Load torchvision ``vgg16`` weights and LPIPS ``vgg.pth`` linear heads.

        Raises:
            FileNotFoundError: a path does not exist. KeyError: a file lacks the expected keys.
        """
        model = cls()
        vgg = torch.load(vgg_path, map_location="cpu", weights_only=True)
        feats = {k[len("features."):]: v for k, v in vgg.items() if k.startswith("features.")}
        if not feats:
            raise KeyError(f"{vgg_path}: no 'features.*' keys (expected torchvision's vgg16 state_dict)")
        model.features.load_state_dict(feats)
        lin = torch.load(lin_path, map_location="cpu", weights_only=True)
        try:
            for k, conv in enumerate(model.lins):
                conv.weight.copy_(lin[f"lin{k}.model.1.weight"])
        except KeyError as e:
            raise KeyError(f"{lin_path}: missing {e} (expected LPIPS v0.1 vgg.pth)") from None
        return model

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = torch.cat([x, y]).sub(self.shift).div(self.scale)
        dist = 0.0
        tap = 0
        for i, layer in enumerate(self.features[:_TAPS[-1] + 1]):
            h = layer(h)
            if i == _TAPS[tap]:
                a, b = (f / (f.pow(2).sum(1, keepdim=True).sqrt() + 1e-10) for f in h.chunk(2))
                dist = dist + self.lins[tap]((a - b).pow(2)).mean(dim=(1, 2, 3))
                tap += 1
        return dist
