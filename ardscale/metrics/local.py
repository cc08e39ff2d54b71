"""``ucf101_local``: a small (2+1)D video classifier trained on the real train clips, whose features
give ``fvd_local`` and ``fid_local`` where the standard I3D / Inception weights are not at hand.

The network (Tran et al. 2018, R(2+1)D, at toy size): a spatial stem, then residual blocks of a
1×3×3 spatial and a 3×1×1 temporal convolution, spatial stride 2 per stage, no temporal stride, so
every frame keeps its own features. Features are the last stage's activations averaged over space:
per frame ``(N, T, C)`` (→ ``fid_local``: Fréchet distance over frames) and their mean over time
``(N, C)`` (→ ``fvd_local``). Inputs are uint8 clips ``(N, T, H, W, 3)``, resized to the trained
``image_size`` when they differ. It is trained on real clips only, never on samples.

    python -m ardscale.metrics.local root=runs/demo/data out=runs/ucf101_local.pt
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .. import cli
from ..data.loader import load_video_clips


@dataclass
class LocalNetConfig:
    """Size of ``ucf101_local``: features have ``width · 2^(stages-1)`` channels."""

    num_classes: int = 101
    width: int = 32              # channels of the first stage; doubled per stage
    stages: int = 4
    image_size: int = 64


def _gn(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, c), c)


class Block2Plus1D(nn.Module):
    """Residual (2+1)D block on ``(N, C, T, H, W)``: spatial 1×3×3 (stride s), temporal 3×1×1."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.spatial = nn.Conv3d(cin, cout, (1, 3, 3), (1, stride, stride), (0, 1, 1), bias=False)
        self.temporal = nn.Conv3d(cout, cout, (3, 1, 1), padding=(1, 0, 0), bias=False)
        self.n1, self.n2 = _gn(cout), _gn(cout)
        self.skip = (nn.Identity() if cin == cout and stride == 1
                     else nn.Conv3d(cin, cout, 1, (1, stride, stride), bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.n1(self.spatial(x)))
        return F.relu(self.n2(self.temporal(h)) + self.skip(x))


class LocalVideoNet(nn.Module):
    """Clips uint8 ``(N, T, H, W, 3)`` → logits ``(N, classes)``; :meth:`features` gives the features."""

    def __init__(self, config: LocalNetConfig):
        super().__init__()
        self.config = c = config
        chans = [c.width * 2**i for i in range(c.stages)]
        self.stem = nn.Sequential(nn.Conv3d(3, chans[0], (1, 3, 3), (1, 2, 2), (0, 1, 1), bias=False),
                                  _gn(chans[0]), nn.ReLU())
        self.blocks = nn.Sequential(*(Block2Plus1D(a, b, 1 if i == 0 else 2)
                                      for i, (a, b) in enumerate(zip([chans[0]] + chans[:-1], chans))))
        self.head = nn.Linear(chans[-1], c.num_classes)

    def _prepare(self, clips: torch.Tensor) -> torch.Tensor:
        x = clips.permute(0, 4, 1, 2, 3).float() / 127.5 - 1                        # (N, 3, T, H, W)
        size = self.config.image_size
        if x.shape[-1] != size or x.shape[-2] != size:
            N, C, T = x.shape[:3]
            x = F.interpolate(x.transpose(1, 2).flatten(0, 1), size=(size, size), mode="bilinear",
                              antialias=True, align_corners=False).view(N, T, C, size, size).transpose(1, 2)
        return x

    def features(self, clips: torch.Tensor) -> torch.Tensor:
        """Per-frame features ``(N, T, C)`` float32."""
        h = self.blocks(self.stem(self._prepare(clips)))                            # (N, C, T, h, w)
        return h.mean(dim=(3, 4)).transpose(1, 2)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(clips).mean(dim=1))


class LocalFeatures:
    """A trained ``ucf101_local`` checkpoint as a feature extractor.

    ``__call__(clips uint8 (N, T, H, W, 3))`` → ``(video feats (N, C), frame feats (N·T, C))`` float64.

    Raises:
        FileNotFoundError: no checkpoint at ``path`` (train one with this module's command).
    """

    def __init__(self, path: str, device: str = "cpu", batch_size: int = 32):
        if not Path(path).is_file():
            raise FileNotFoundError(f"no local feature network at {path}: train one with "
                                    "`python -m ardscale.metrics.local root=DATA out=PATH`")
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        self.net = LocalVideoNet(LocalNetConfig(**ckpt["config"]))
        self.net.load_state_dict(ckpt["state_dict"])
        self.net.to(device).eval()
        self.meta = {k: v for k, v in ckpt.items() if k not in ("state_dict",)}
        self.device, self.batch_size = device, batch_size

    @torch.no_grad()
    def __call__(self, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        frames = torch.cat([self.net.features(c.to(self.device)).double().cpu()
                            for c in torch.as_tensor(clips).split(self.batch_size)])
        return frames.mean(dim=1), frames.flatten(0, 1)

    @torch.no_grad()
    def accuracy(self, video_feats: torch.Tensor, labels: torch.Tensor) -> float | None:
        """Top-1 accuracy in [0, 1] of the network's head on video features ``(N, C)`` (from
        :meth:`__call__`) against ``labels`` ``(N,)``, over the clips whose label the network was
        trained on (its checkpoint's ``classes``; -1 = no class); None when there are none."""
        known = labels >= 0
        if self.meta.get("classes"):
            known &= torch.isin(labels, torch.tensor(self.meta["classes"]))
        if not known.any():
            return None
        logits = self.net.head(video_feats[known].float().to(self.device)).cpu()
        return (logits.argmax(-1) == labels[known]).float().mean().item()


def _augment(clips: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and a random shift of up to 1/8 of the frame (reflect padding)."""
    flip = torch.rand(len(clips), generator=gen) < 0.5
    clips = torch.where(flip[:, None, None, None, None], clips.flip(3), clips)
    N, T, H, W, C = clips.shape
    pad = H // 8
    x = F.pad(clips.permute(0, 1, 4, 2, 3).flatten(0, 1).float(), (pad,) * 4, mode="reflect")
    dy, dx = torch.randint(0, 2 * pad + 1, (2,), generator=gen).tolist()
    return x[:, :, dy:dy + H, dx:dx + W].round().byte().view(N, T, C, H, W).permute(0, 1, 3, 4, 2)


@torch.no_grad()
def accuracy(net: LocalVideoNet, clips: torch.Tensor, labels: torch.Tensor, batch_size: int = 64) -> float:
    """Top-1 accuracy in [0, 1] on uint8 clips ``(N, T, H, W, 3)`` with labels ``(N,)``."""
    net.eval()
    pred = torch.cat([net(c).argmax(-1) for c in clips.split(batch_size)])
    net.train()
    return (pred == labels).float().mean().item()


def train_local(train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
                config: LocalNetConfig, epochs: int = 20, batch_size: int = 32, lr: float = 2e-3,
                seed: int = 0, progress: bool = True) -> tuple[LocalVideoNet, dict]:
    """Train on ``train`` = (clips uint8 ``(N, T, H, W, 3)``, labels ``(N,)`` long): AdamW, one-cycle
    LR, label smoothing 0.1, flips and shifts. Returns the net and ``{train,test}_accuracy`` (in
    [0, 1]), clip counts and epochs."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = LocalVideoNet(config)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.05)
    steps = epochs * math.ceil(len(train[0]) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps)
    bar = tqdm(total=steps, desc="ucf101_local", disable=not progress)
    for _ in range(epochs):
        for idx in torch.randperm(len(train[0]), generator=gen).split(batch_size):
            loss = F.cross_entropy(net(_augment(train[0][idx], gen)), train[1][idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    return net, {"train_accuracy": accuracy(net, *train), "test_accuracy": accuracy(net, *test),
                 "train_clips": len(train[0]), "test_clips": len(test[0]), "epochs": epochs}


def save_local(net: LocalVideoNet, report: dict, path: str) -> None:
    """The checkpoint ``path`` (weights, config, accuracies) and its report beside it (``.json``)."""
    report = {**report, "config": asdict(net.config)}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save({**report, "state_dict": net.state_dict()}, path)
    Path(path).with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")


@dataclass
class LocalJob:
    """Train ``ucf101_local`` on a data root's real clips."""

    root: str = ""                   # dataset root with videos/train and videos/test shards (required)
    out: str = ""                    # checkpoint path (.pt; required); its report is written beside it
    epochs: int = 20
    width: int = 32                  # channels of the first stage
    seed: int = 0


def _job(argv: list[str]) -> dict:
    a = cli.parse(LocalJob, argv)
    if not a.root or not a.out:
        raise ValueError("root= (the dataset root) and out= (the checkpoint path) are required")
    train, test = load_video_clips(a.root, "train"), load_video_clips(a.root, "test")
    cfg = LocalNetConfig(width=a.width, image_size=int(train[0].shape[2]))
    net, report = train_local(train, test, cfg, epochs=a.epochs, seed=a.seed)
    report.update(data=a.root, classes=sorted(set(train[1].tolist())))
    save_local(net, report, a.out)
    print(json.dumps(report))
    return report


def main(argv: list[str] | None = None) -> dict:
    return cli.run(_job, argv, __doc__, "python -m ardscale.metrics.local root=DATA out=PATH", LocalJob)


if __name__ == "__main__":
    main()
