"""The diffusion model's precision policy (a mixin of `DiffusionBackend`, db3d.diffusion.base).

On CUDA with fp16/bf16 the frozen weights are stored in the compute dtype and the work runs under
`torch.autocast` (mixed precision); everything returned is float32. Parameters made trainable are
upcast to fp32 master weights, as diffusers' training scripts do, and cast back by `freeze`, so SDS
after DreamBooth runs as fast and small as on the base model. On CPU it is fp32 throughout
(db3d.diffusion.loading.resolve_dtype). The VAE runs in its own dtype outside autocast (see the
backend's constructor for why).
"""
from __future__ import annotations

import contextlib
from typing import Iterable

import torch


class PrecisionPolicy:
    device: torch.device
    dtype: torch.dtype

    def _autocast(self, enabled: bool = True):
        """Mixed precision for a model call: autocast to the compute dtype on CUDA, else nothing."""
        if enabled and self.device.type == "cuda" and self.dtype != torch.float32:
            return torch.autocast("cuda", dtype=self.dtype)
        return contextlib.nullcontext()

    @staticmethod
    def _upcast_trained(params: Iterable[torch.nn.Parameter]) -> None:
        """Trained parameters: fp32 master weights, requiring grad."""
        for p in params:
            if p.dtype != torch.float32:
                p.data = p.data.float()
            p.requires_grad_(True)

    def _downcast_trained(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Back to the compute dtype after training (nothing to do in fp32)."""
        if self.dtype != torch.float32:
            for p in params:
                p.data = p.data.to(self.dtype)
