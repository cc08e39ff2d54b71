"""PatchGAN discriminator and the adversarial terms of AR-VAE stage 2 (paper Sec. 4.1, after
Esser et al. [7]: hinge loss, adaptive generator weight, delayed start)."""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


class PatchDiscriminator(nn.Module):
    """pix2pix/VQGAN ``NLayerDiscriminator``: frames ``(N, 3, H, W)`` in [-1, 1] → logits
    ``(N, 1, H', W')``, one per overlapping patch.

    GroupNorm replaces BatchNorm: batch statistics would differ per rank and per micro batch.
    """

    def __init__(self, in_channels: int = 3, channels: int = 64, num_layers: int = 3):
        super().__init__()
        layers = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        c = channels
        for n in range(1, num_layers + 1):
            out = channels * min(2**n, 8)
            stride = 2 if n < num_layers else 1
            layers += [nn.Conv2d(c, out, 4, stride, 1, bias=False), nn.GroupNorm(min(32, out // 4), out),
                       nn.LeakyReLU(0.2)]
            c = out
        layers.append(nn.Conv2d(c, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.to(self.net[0].weight.dtype))


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss ``½(E[relu(1 - D(x))] + E[relu(1 + D(x̂))])``."""
    return 0.5 * (F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean())


def adaptive_weight(nll: torch.Tensor, g_loss: torch.Tensor, out: torch.Tensor,
                    weight_grad: Callable[[torch.Tensor], torch.Tensor],
                    max_weight: float = 1e4) -> torch.Tensor:
    """VQGAN's balance ``‖∇_W nll‖ / (‖∇_W g_loss‖ + 1e-4)`` at the decoder's last layer W.

    ``∇_W L`` is formed from activations (``weight_grad`` maps ``∂L/∂out`` to ``∂L/∂W``, e.g.
    ``torch.nn.grad.conv2d_weight`` with the layer's input), not by differentiating W: DeepSpeed
    runs its gradient reduction after any backward pass through an engine's output or a
    parameter. So the caller gives losses computed from a detached leaf ``out`` (the decoded
    video, the last layer's output).

    Returns:
        A detached scalar.
    """
    def grad_w(loss):
        return weight_grad(torch.autograd.grad(loss, out, retain_graph=True)[0].float())

    return (grad_w(nll).norm() / (grad_w(g_loss).norm() + 1e-4)).clamp(0, max_weight).detach()
