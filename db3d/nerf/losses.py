"""Geometry regularisers of DreamFusion-style NeRF optimisation.

Each function takes per-sample quantities in either of nerfacc's two layouts:
- dense ("batched"): `[n_rays, n_samples]` tensors (the CPU sampler);
- packed ("flattened"): `[n_samples_total]` tensors with `ray_indices` (the occupancy-grid
  sampler), samples of one ray contiguous and in front-to-back order, as nerfacc returns them.
Each returns a scalar: the per-ray sum averaged over rays, so numbers are comparable across
resolutions and samplers.

nerfacc 0.5 dropped the distortion loss it had in 0.3, so it is written here in the O(N) form of
Mip-NeRF 360 (eq. 15) using exclusive prefix sums; tests check it against the O(N^2) definition.
"""
from __future__ import annotations

import torch
from torch import Tensor


def segment_exclusive_cumsum(x: Tensor, ray_indices: Tensor) -> Tensor:
    """Exclusive prefix sum restarting at each ray of a packed (ray-sorted) sample list.

    Plain torch (works on CPU and CUDA, differentiable); accumulated in float64 so long
    flattened sample lists do not lose precision.
    """
    c = torch.cumsum(x.double(), dim=0) - x.double()
    first = torch.searchsorted(ray_indices.contiguous(), ray_indices.contiguous())  # first sample of each one's ray
    return (c - c[first]).to(x.dtype)


def _reduce_per_ray(per_sample: Tensor, ray_indices: Tensor | None, n_rays: int | None) -> Tensor:
    if ray_indices is None:
        return per_sample.sum(dim=-1).mean() if per_sample.numel() else per_sample.sum()
    n = int(n_rays) if n_rays is not None else (int(ray_indices.max()) + 1 if ray_indices.numel() else 1)
    return per_sample.sum() / max(n, 1)


def distortion_loss(weights: Tensor, t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor | None = None,
                    n_rays: int | None = None) -> Tensor:
    """Mip-NeRF 360 distortion: sum_ij w_i w_j |s_i - s_j| + 1/3 sum_i w_i^2 (t_end_i - t_start_i),
    with s the interval midpoints, in O(N) per ray; mean over rays."""
    s = 0.5 * (t_starts + t_ends)
    ws = weights * s
    if ray_indices is None:
        w_excl = torch.cumsum(weights, dim=-1) - weights
        ws_excl = torch.cumsum(ws, dim=-1) - ws
    else:
        w_excl = segment_exclusive_cumsum(weights, ray_indices)
        ws_excl = segment_exclusive_cumsum(ws, ray_indices)
    bi = 2.0 * weights * (s * w_excl - ws_excl)  # pairs j<i, counted twice
    uni = weights.square() * (t_ends - t_starts) / 3.0
    return _reduce_per_ray(bi + uni, ray_indices, n_rays)


def distortion_loss_bruteforce(weights: Tensor, t_starts: Tensor, t_ends: Tensor) -> Tensor:
    """O(N^2) reference for dense [n_rays, n_samples] inputs (tests only)."""
    s = 0.5 * (t_starts + t_ends)
    pair = (weights[:, :, None] * weights[:, None, :] * (s[:, :, None] - s[:, None, :]).abs()).sum(dim=(1, 2))
    uni = (weights.square() * (t_ends - t_starts)).sum(dim=-1) / 3.0
    return (pair + uni).mean()


def orientation_loss(weights: Tensor, normals: Tensor, dirs: Tensor, ray_indices: Tensor | None = None,
                     n_rays: int | None = None) -> Tensor:
    """DreamFusion's R_orient = sum_i stop_grad(w_i) * max(0, n_i . d)^2, mean over rays.

    `d` is the ray direction (camera -> point): an outward normal with a positive component along
    it faces away from the camera, which is what is penalised. Dense: weights [R,S],
    normals [R,S,3], dirs [R,3]; packed: weights [M], normals [M,3], dirs [M,3].
    """
    if ray_indices is None and dirs.dim() == normals.dim() - 1:
        dirs = dirs[..., None, :]
    facing_away = (normals * dirs).sum(dim=-1).clamp_min(0.0)
    return _reduce_per_ray(weights.detach() * facing_away.square(), ray_indices, n_rays)


def opacity_loss(opacity: Tensor) -> Tensor:
    """Sparsity on accumulated opacity (threestudio's `sqrt(a^2 + 0.01)`, a smooth L1): pushes
    empty pixels to stay empty so the object does not fill the box."""
    return (opacity.square() + 0.01).sqrt().mean()


def opacity_entropy_loss(opacity: Tensor, eps: float = 1e-5) -> Tensor:
    """Binary entropy of opacity (stable-dreamfusion's `lambda_entropy`): pushes it to 0 or 1."""
    a = opacity.clamp(eps, 1 - eps)
    return (-a * torch.log(a) - (1 - a) * torch.log(1 - a)).mean()
