"""The AR-VAE objective (paper Sec. 4.1), pure: losses and metrics, no backward, no optimizer.

Stage 1: L1 + L2 (+ LPIPS where weight files exist). Stage 2 adds
a PatchGAN discriminator (hinge loss) from ``disc_start`` on; the generator's adversarial term is
scaled by VQGAN's adaptive weight at the pixel head's last conv. Stage 3 is the same objective on
clips through the temporally causal decoder.
"""
from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from .discriminator import adaptive_weight, hinge_d_loss
from .lpips import LPIPS


@contextmanager
def capture_input(module: nn.Module):
    """Within the block, ``box["input"]`` is the input of ``module``'s latest forward; the hook is
    removed on exit."""
    box = {}
    handle = module.register_forward_hook(lambda m, inp, out: box.update(input=inp[0]))
    try:
        yield box
    finally:
        handle.remove()


class VAELoss:
    """Losses of one AR-VAE micro batch, from a ``vae_loss`` config section (weights ``l1``,
    ``l2``, ``perceptual``, ``adversarial``; ``disc_start``) and an optional :class:`LPIPS`."""

    def __init__(self, c, lpips: LPIPS | None = None):
        self.c, self.lpips = c, lpips

    @classmethod
    def from_config(cls, c) -> VAELoss:
        """With LPIPS from ``c.perceptual_vgg`` / ``c.perceptual_lin`` when ``c.perceptual > 0``
        (the vae task's preflight checked the files exist; nothing downloads)."""
        return cls(c, LPIPS.from_files(c.perceptual_vgg, c.perceptual_lin) if c.perceptual > 0 else None)

    def gan_on(self, step: int, has_disc: bool) -> bool:
        return has_disc and self.c.adversarial > 0 and step >= self.c.disc_start

    def reconstruction(self, fake: torch.Tensor, real: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Weighted L1 + L2 (+ LPIPS) of clips ``(B, F, 3, H, W)`` in [-1, 1]; the loss and its parts."""
        c = self.c
        parts = {"l1": F.l1_loss(fake, real), "l2": F.mse_loss(fake, real)}
        nll = c.l1 * parts["l1"] + c.l2 * parts["l2"]
        if self.lpips is not None:
            parts["perceptual"] = self.lpips.to(fake.device)(fake.flatten(0, 1), real.flatten(0, 1)).mean()
            nll = nll + c.perceptual * parts["perceptual"]
        return nll, parts

    def generator(self, fake: torch.Tensor, real: torch.Tensor, disc_frozen: Callable | None,
                  last_input: torch.Tensor | None = None, head: nn.Module | None = None
                  ) -> tuple[torch.Tensor, dict]:
        """The AR-VAE's loss on its reconstruction ``fake (B, F, 3, H, W)`` float32 of the ``real``
        clips ``(B, F, 3, H, W)``.

        With ``disc_frozen`` (the discriminator with its parameters out of autograd; None before
        ``disc_start``) it adds ``adversarial · λ · (-E[D(fake)])``, λ VQGAN's adaptive weight at
        the pixel ``head``'s last conv ``head.conv_out`` (whose forward input was ``last_input``;
        ``head.grad_at_conv_out`` maps a gradient at the head's output to that conv's output).
        Returns the loss and its parts.
        """
        nll, parts = self.reconstruction(fake, real)
        if disc_frozen is None:
            return nll, parts
        g_adv = -disc_frozen(fake.flatten(0, 1)).float().mean()
        weight = self.c.adversarial * self._adaptive_weight(fake, real, disc_frozen, last_input, head)
        return nll + weight * g_adv, {**parts, "g_adv": g_adv, "adaptive_weight": weight}

    def _adaptive_weight(self, fake, real, disc_frozen, last_input, head) -> torch.Tensor:
        leaf = fake.detach().requires_grad_(True)                               # (B, F, 3, H, W)
        nll, _ = self.reconstruction(leaf, real)
        g_adv = -disc_frozen(leaf.flatten(0, 1)).float().mean()
        inp, conv = last_input.detach().float(), head.conv_out
        shape = getattr(conv.weight, "ds_shape", conv.weight.shape)             # ZeRO-3 partitions W
        weight_grad = lambda g: torch.nn.grad.conv2d_weight(
            inp, shape, head.grad_at_conv_out(g.flatten(0, 1)), padding=conv.padding)
        return adaptive_weight(nll, g_adv, leaf, weight_grad)

    @staticmethod
    def discriminator(disc: Callable, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """Hinge loss of the discriminator on real and (detached) reconstructed frames ``(N, 3, H, W)``."""
        return hinge_d_loss(disc(real).float(), disc(fake.detach()).float())
