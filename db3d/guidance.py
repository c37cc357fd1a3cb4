"""Score distillation sampling (DreamFusion, Poole et al. 2022) against a `DiffusionBackend`.

For a render x = g(theta) with model-space x0 = E(x) (VAE latents x scaling, or 2x-1 pixels):

    t ~ U[t_lo, t_hi],  eps ~ N(0, I),  x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps
    grad_x0 = w(t) (eps_hat(x_t, t, y; CFG) - eps)        (no backprop through the UNet)

and `loss = 0.5 * ||x0 - sg(x0 - grad)||^2 / B` (a sum over the N elements of each image, N kept in
`elements_per_image`: the other NeRF terms are put on this scale, db3d.nerf.objective), whose
gradient w.r.t. x0 is exactly grad / B, so
`loss.backward()` carries the SDS gradient through the encoder (VAE for latent models, as
stable-dreamfusion and threestudio do) and the renderer into theta; its value is not meaningful.

Config keys (`sds` section): `guidance_scale`; `t_range` [lo, hi] as fractions of T;
`t_schedule` `random` (t ~ U[lo, hi] every step) or `annealed` (upper bound decays linearly from hi
to lo over `total_iters`, DreamTime-style coarse-to-fine); `weighting` `sds` (w = 1 - abar_t,
DreamFusion's) or `uniform` (w = 1); `grad_clip` > 0 clamps every gradient element to
[-grad_clip, grad_clip] (stable-dreamfusion / threestudio's `grad_clip`), 0 turns it off.
A non-finite gradient (fp16 overflow, a diverged NeRF) is zeroed and reported in `info["nan"]`
instead of poisoning the optimiser state.
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch.profiler import record_function

from .diffusion.base import DiffusionBackend

log = logging.getLogger(__name__)


class ScoreDistillation:
    """SDS loss for one optimisation run: `loss, info = sds(rendered, cond, uncond, step)`."""

    def __init__(self, backend: DiffusionBackend, sds_cfg: dict, total_iters: int):
        self.backend = backend
        # every key is schema-required (config/schema.yaml, sds): no default here
        self.guidance_scale = float(sds_cfg["guidance_scale"])
        lo, hi = (float(v) for v in sds_cfg["t_range"])
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"sds.t_range must satisfy 0 <= lo <= hi <= 1, got {[lo, hi]}")
        T = backend.num_train_timesteps
        self.t_min = max(int(lo * T), 1)
        self.t_max = max(min(int(hi * T), T - 1), self.t_min)
        self.t_schedule = sds_cfg["t_schedule"]
        self.weighting = sds_cfg["weighting"]
        if self.t_schedule not in ("random", "annealed"):
            raise ValueError(f"sds.t_schedule must be random or annealed, got {self.t_schedule!r}")
        if self.weighting not in ("sds", "uniform"):
            raise ValueError(f"sds.weighting must be sds or uniform, got {self.weighting!r}")
        self.grad_clip = float(sds_cfg["grad_clip"])
        self.total_iters = max(int(total_iters), 1)
        self.nan_count = 0
        # N of db3d.nerf.objective's common scale: elements of one model-space image (set by each call)
        self.elements_per_image = 0

    def t_bounds(self, step: int) -> tuple[int, int]:
        """[t_lo, t_hi] (inclusive) from which this step's t is drawn."""
        if self.t_schedule == "annealed":
            frac = min(max(step / self.total_iters, 0.0), 1.0)
            hi = round(self.t_max - (self.t_max - self.t_min) * frac)
            return self.t_min, max(int(hi), self.t_min)
        return self.t_min, self.t_max

    def sample_t(self, batch: int, step: int, generator: torch.Generator | None = None) -> torch.Tensor:
        lo, hi = self.t_bounds(step)
        return self.backend._randint(lo, hi + 1, batch, generator)

    def __call__(self, rendered: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor | None, step: int,
                 generator: torch.Generator | None = None, latent: bool = False,
                 defer: bool = False) -> tuple[torch.Tensor, dict[str, Any]]:
        """SDS surrogate loss for renders [B,3,H,W] in [0,1] (or model-space latents with `latent=True`).

        `cond`/`uncond`: text embeddings [B or 1, L, D] from `backend.encode_text` (per-view
        prompts give per-sample `cond`); `uncond=None` or guidance 1 runs the conditional model
        only. Returns `(loss, info)`, info = {t: list[int], grad_norm: float (after guard and
        clip), grad_norm_raw: float, nan: bool, w: float (mean weight)}. With `defer`, info is
        {"stats": a device tensor} and nothing waits for the GPU: pass `stats.tolist()` to
        `host_info` later (NerfFit does, for many steps in one copy).
        """
        b = self.backend
        with record_function("sds.encode"):
            x0 = rendered.to(b.device) if latent else b.encode_images(rendered)
            x0 = x0.float()
        batch = x0.shape[0]
        self.elements_per_image = int(x0[0].numel())
        with torch.no_grad():
            t = self.sample_t(batch, step, generator)
            noise = b._randn(x0.shape, generator)
            x_t = b.add_noise(x0.detach(), noise, t)
            with record_function("sds.unet"):
                eps_hat = b.predict_noise(x_t, t, cond, uncond if self.guidance_scale != 1.0 else None,
                                          self.guidance_scale)
            if self.weighting == "sds":
                w = (1.0 - b.alphas_cumprod[t]).float()
            else:
                w = torch.ones(batch, device=b.device)
            grad = w.view(-1, 1, 1, 1) * (eps_hat - noise)
            finite = torch.isfinite(grad).all()
            raw_norm = grad.norm()
            grad = torch.where(finite, grad, torch.zeros_like(grad))
            if self.grad_clip > 0:
                grad = grad.clamp(-self.grad_clip, self.grad_clip)
            # everything the host needs in one tensor: one device-to-host copy (each .tolist() waits
            # for the GPU), made here or, with `defer`, by the caller for many steps at once
            stats = torch.cat([torch.stack([raw_norm, grad.norm(), finite.float(), w.mean()]), t.float()])
        target = (x0 - grad).detach()
        loss = 0.5 * ((x0 - target) ** 2).sum() / batch
        info = {"stats": stats} if defer else self.host_info(stats.tolist(), step)
        return loss, info

    def host_info(self, stats: list[float], step: int) -> dict[str, Any]:
        """`info` from the values of a step's `stats` tensor; counts and logs a zeroed gradient."""
        t = [int(v) for v in stats[4:]]
        nan = stats[2] < 0.5
        if nan:
            self.nan_count += 1
            log.warning("SDS step %d: non-finite gradient (t=%s) zeroed (%d so far)", step, t, self.nan_count)
        return {"t": t, "grad_norm": stats[1], "grad_norm_raw": stats[0], "nan": nan, "w": stats[3]}
