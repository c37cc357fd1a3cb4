"""The radiance field: a multi-resolution dense feature grid + a small MLP, in plain PyTorch.

Why this design:
- DreamFusion-style optimisation needs a field that trains fast from a blob and has usable
  normals. Hash grids (instant-ngp, stable-dreamfusion, threestudio) need CUDA kernels; a few
  *dense* grids of growing resolution give the same coarse-to-fine inductive bias at the small
  sizes this repo runs on CPU, and are a few dozen lines of torch.
- Interpolation is written by hand (8 gathers + trilinear weights) instead of `F.grid_sample`:
  it is twice differentiable on every torch version (the orientation loss back-propagates
  through the density gradient, i.e. needs d/dθ of d/dx) and measured faster on CPU.
- Density = softplus(raw + blob), the blob bias of Magic3D/threestudio
  (`scale * (1 - |x| / radius)`) so optimisation starts from a soft ball at the centre,
  as DreamFusion's τ_init does.
- Features: albedo through a sigmoid for `out_channels=3`; raw features for Latent-NeRF
  (`out_channels=4`, the field lives in the diffusion model's latent space, no activation).
- Normals are the normalised negative density gradient (outward for a density that is high
  inside), by autograd (`create_graph=True` while training, so the orientation loss trains the
  geometry) or by central finite differences.

Coordinates: world space, the object inside the cube [-bound, bound]^3; density is zero outside.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NORMAL_METHODS = ("autograd", "finite_difference")


class DenseGridEncoding(nn.Module):
    """Multi-resolution dense feature grids over [-bound, bound]^3, trilinearly interpolated.

    All levels live in one flat table (row = one grid vertex of one level) so one gather per
    cube corner serves every level at once.
    """

    def __init__(self, bound: float, resolutions: Sequence[int], features: int, init_scale: float = 1e-4):
        super().__init__()
        if min(resolutions) < 2:
            raise ValueError(f"grid resolutions must be >= 2, got {list(resolutions)}")
        self.bound = float(bound)
        self.features = int(features)
        self.register_buffer("resolutions", torch.tensor(list(resolutions), dtype=torch.long), persistent=False)
        sizes = [r**3 for r in resolutions]
        offsets = [0] + list(torch.tensor(sizes).cumsum(0)[:-1].tolist())
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.long), persistent=False)
        corners = [[dx, dy, dz] for dx in (0, 1) for dy in (0, 1) for dz in (0, 1)]
        # per corner and axis, the offset to its vertex (long, added to indices) and the same as a
        # mask (picks f or 1 - f): both kept, as a cast per call would be one more kernel launch
        self.register_buffer("corners", torch.tensor(corners, dtype=torch.long), persistent=False)
        self.register_buffer("corner_is_upper", self.corners.bool(), persistent=False)
        # instant-ngp initialises features ~U(-1e-4, 1e-4): the MLP (and the blob) decide the start.
        self.table = nn.Parameter(torch.empty(sum(sizes), features).uniform_(-init_scale, init_scale))

    @property
    def out_dim(self) -> int:
        return int(self.resolutions.numel()) * self.features

    def forward(self, x: Tensor) -> Tensor:
        """x [N,3] world coordinates -> [N, levels*features]; points outside are clamped."""
        res = self.resolutions.to(x.dtype)  # [L]
        u = (x.clamp(-self.bound, self.bound) + self.bound) / (2 * self.bound)  # [N,3] in [0,1]
        u = u[:, None, :] * (res[None, :, None] - 1)  # [N,L,3] continuous vertex coordinates
        r = self.resolutions[None, :, None]  # long [1,L,1]
        i0 = torch.minimum(u.detach().floor().long(), r - 2).clamp_min(0)  # lower corner
        f = u - i0.to(u.dtype)  # [N,L,3] fractional position, carries the gradient wrt x
        # the 8 cube corners at once (one gather, one weighted sum): the same interpolation as a loop
        # over corners in ~10 kernels instead of ~100, and this runs with a double backward on every
        # SDS step, where the host issuing kernels, not the GPU, sets the pace
        ic = i0[:, :, None, :] + self.corners  # [N,L,8,3]
        idx = (ic[..., 0] * r + ic[..., 1]) * r + ic[..., 2] + self.offsets[None, :, None]  # [N,L,8]
        fc = f[:, :, None, :]
        w = torch.where(self.corner_is_upper, fc, 1 - fc)  # [N,L,8,3] per-axis weights
        w = w[..., 0] * w[..., 1] * w[..., 2]  # [N,L,8] trilinear weights
        out = (w[..., None] * self.table[idx]).sum(dim=2)  # [N,L,F]
        return out.reshape(x.shape[0], -1)


def _level_resolutions(grid_resolution: int, num_levels: int) -> list[int]:
    """Geometric ladder ending at `grid_resolution`, halving each level, never below 4."""
    return sorted({max(4, int(round(grid_resolution / 2**k))) for k in range(num_levels)})


class RadianceField(nn.Module):
    """Density + albedo (or latent features) over [-bound, bound]^3.

    `forward(x[N,3]) -> (sigma[N] >= 0, feat[N,C])`; `density(x)`; `normals(x, create_graph)`;
    `forward_with_normals(x, create_graph) -> (sigma, feat, normal[N,3])`.
    Constructor arguments are kept in `self.config` so a checkpoint can rebuild the module.
    """

    def __init__(
        self,
        bound: float,
        grid_resolution: int,
        hidden_dim: int,
        out_channels: int = 3,
        *,
        num_levels: int = 3,
        level_features: int = 4,
        blob_scale: float = 10.0,
        blob_radius: float = 0.5,
        normal_method: str = "autograd",
        fd_eps: float | None = None,
    ):
        super().__init__()
        if normal_method not in NORMAL_METHODS:
            raise ValueError(f"normal_method must be one of {NORMAL_METHODS}, got {normal_method!r}")
        self.config = dict(
            bound=float(bound), grid_resolution=int(grid_resolution), hidden_dim=int(hidden_dim),
            out_channels=int(out_channels), num_levels=int(num_levels), level_features=int(level_features),
            blob_scale=float(blob_scale), blob_radius=float(blob_radius), normal_method=normal_method,
            fd_eps=None if fd_eps is None else float(fd_eps),
        )
        self.bound = float(bound)
        self.out_channels = int(out_channels)
        self.blob_scale = float(blob_scale)
        self.blob_radius = float(blob_radius)
        self.normal_method = normal_method
        # default finite-difference step: half a cell of the finest grid
        self.fd_eps = float(fd_eps) if fd_eps is not None else self.bound / max(int(grid_resolution), 2)
        self.encoding = DenseGridEncoding(bound, _level_resolutions(int(grid_resolution), int(num_levels)), level_features)
        self.mlp = nn.Sequential(
            nn.Linear(self.encoding.out_dim, hidden_dim), nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, hidden_dim), nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, 1 + self.out_channels),
        )

    # -- core ---------------------------------------------------------------------------------
    def density_bias(self, x: Tensor) -> Tensor:
        """Blob prior (pre-activation): positive inside `blob_radius`, negative outside."""
        return self.blob_scale * (1.0 - x.norm(dim=-1) / self.blob_radius)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.mlp(self.encoding(x))
        sigma = F.softplus(h[:, 0] + self.density_bias(x))
        inside = (x.abs() <= self.bound).all(dim=-1)
        sigma = torch.where(inside, sigma, torch.zeros_like(sigma))
        feat = h[:, 1:]
        if self.out_channels == 3:
            feat = torch.sigmoid(feat)
        return sigma, feat

    def density(self, x: Tensor) -> Tensor:
        return self.forward(x)[0]

    # -- normals ------------------------------------------------------------------------------
    def forward_with_normals(self, x: Tensor, create_graph: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """(sigma, feat, normal): normal = -grad(sigma)/|grad(sigma)| (outward), [N,3].

        With autograd, `create_graph=True` keeps the graph so losses on normals reach the
        parameters; without it the normals are detached. Falls back to finite differences
        when autograd is unavailable (inference mode).
        """
        use_fd = self.normal_method == "finite_difference" or torch.is_inference_mode_enabled()
        if use_fd:
            sigma, feat = self.forward(x)
            grad = self._fd_gradient(x)
            if not create_graph:
                grad = grad.detach()
        else:
            outer_grad = torch.is_grad_enabled()
            with torch.enable_grad():
                xg = x.detach().requires_grad_(True)
                sigma, feat = self.forward(xg)
                # keep the graph when the caller will back-propagate through sigma/feat
                (grad,) = torch.autograd.grad(sigma.sum(), xg, create_graph=create_graph,
                                              retain_graph=create_graph or outer_grad)
            if not outer_grad:
                sigma, feat = sigma.detach(), feat.detach()
            if not create_graph:
                grad = grad.detach()
        normal = -F.normalize(grad, dim=-1, eps=1e-12)
        return sigma, feat, normal

    def normals(self, x: Tensor, create_graph: bool = False) -> Tensor:
        return self.forward_with_normals(x, create_graph)[2]

    def _fd_gradient(self, x: Tensor) -> Tensor:
        eps = self.fd_eps
        offsets = torch.eye(3, dtype=x.dtype, device=x.device) * eps  # [3,3]
        pts = torch.cat([x[:, None, :] + offsets, x[:, None, :] - offsets], dim=1)  # [N,6,3]
        s = self.density(pts.reshape(-1, 3)).reshape(-1, 6)
        return (s[:, :3] - s[:, 3:]) / (2 * eps)


class Background(nn.Module):
    """Environment colour as a function of view direction (DreamFusion's background MLP).

    `fixed_color` (a sequence of `out_channels` numbers) gives a constant background instead,
    e.g. white for renders that are compared against masked photos. Colour backgrounds go
    through a sigmoid; latent (C=4) backgrounds are raw.
    """

    def __init__(self, out_channels: int = 3, hidden_dim: int = 16, num_freqs: int = 4,
                 fixed_color: Sequence[float] | None = None):
        super().__init__()
        self.out_channels = int(out_channels)
        self.num_freqs = int(num_freqs)
        if fixed_color is not None:
            fixed_color = [float(c) for c in fixed_color]
            if len(fixed_color) != self.out_channels:
                raise ValueError(f"fixed_color needs {self.out_channels} values, got {len(fixed_color)}")
        self.config = dict(out_channels=self.out_channels, hidden_dim=int(hidden_dim),
                           num_freqs=self.num_freqs, fixed_color=fixed_color)
        if fixed_color is not None:
            self.register_buffer("color", torch.tensor(fixed_color, dtype=torch.float32))
            self.mlp = None
        else:
            in_dim = 3 + 6 * self.num_freqs
            self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True),
                                     nn.Linear(hidden_dim, self.out_channels))

    def forward(self, dirs: Tensor) -> Tensor:
        """dirs [N,3] (unit ray directions) -> [N,C]."""
        if self.mlp is None:
            return self.color.to(dirs)[None].expand(dirs.shape[0], -1)
        freqs = 2.0 ** torch.arange(self.num_freqs, dtype=dirs.dtype, device=dirs.device) * math.pi
        ang = dirs[:, :, None] * freqs  # [N,3,F]
        enc = torch.cat([dirs, torch.sin(ang).flatten(1), torch.cos(ang).flatten(1)], dim=-1)
        out = self.mlp(enc)
        return torch.sigmoid(out) if self.out_channels == 3 else out
