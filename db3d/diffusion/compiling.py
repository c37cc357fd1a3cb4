"""How the diffusion model's hot paths are compiled: `torch.compile` and CUDA graphs.

A mixin of `DiffusionBackend` (db3d.diffusion.base), kept apart from the model contract: what is
computed never depends on it, only how fast. `compile_models` sets up `self._compiled`, `_unet_module`
picks the module a UNet call goes through, `_graphs_stale` drops captured graphs when the UNet's
structure or weights' storage changes (LoRA added, fine-tuning upcasts, gradient checkpointing).
The captured graphs themselves are db3d.diffusion.graphs.CUDAGraphed.
"""
from __future__ import annotations

from typing import Any

import torch


def cudagraph_mode(value: bool | str | None) -> str:
    """`compile_models`' `cudagraphs` as "" (off), "direct" (torch.cuda.CUDAGraph) or "compile"
    (torch.compile reduce-overhead); True means "direct"."""
    if value is None or value is False:
        return ""
    if value is True:
        return "direct"
    v = str(value).strip().lower()
    if v in ("", "0", "false", "no", "off"):
        return ""
    if v in ("1", "true", "yes", "on", "direct"):
        return "direct"
    if v in ("compile", "reduce-overhead"):
        return "compile"
    raise ValueError(f"cudagraphs={value!r}: expected off (0), direct (1) or compile")


class CompiledModels:
    """`compile_models` / `uncompile_models` and the UNet module a call goes through."""

    _compiled: dict[str, Any]

    def _unet_module(self):
        """The UNet a call goes through: after `compile_models`, the compiled one (CUDA-graphed for
        calls without autograd); else the eager module."""
        compiled = getattr(self, "_compiled", None) or {}
        graphed = compiled.get("unet_graphed") if not torch.is_grad_enabled() else None
        return graphed if graphed is not None else compiled.get("unet", self.unet)

    def compile_models(self, unet_mode: str | None = "default", *, cudagraphs: bool | str = False,
                       vae_encoder: bool = False, backend: str = "inductor") -> list[str]:
        """`torch.compile` the diffusion model's hot paths and/or run the UNet's calls without
        autograd as CUDA graphs; what they compute does not change (fused kernels round
        differently, as any kernel choice does; CUDA graphs replay the eager kernels). Both are
        lazy: the first call of each shape / grad mode pays. Returns notes saying what was done.

        - `unet_mode` (default | reduce-overhead | max-autotune | None): the UNet, for every call
          (None: eager, except what `cudagraphs` covers);
        - `cudagraphs`: calls made without autograd (SDS guidance, DDIM sampling) are replayed from
          CUDA graphs, so the UNet's ~1000 kernel launches become one graph launch; training keeps
          `unet_mode` (CUDA only). `"direct"` (or True): captured with `torch.cuda.CUDAGraph` per
          input shape (`graphs.CUDAGraphed`: eager kernels, no tracing, capture in well under a
          second); `"compile"`: a second torch.compile with mode reduce-overhead (inductor's
          kernels in CUDA graphs; its tracing and code generation take about a minute per job);
        - `vae_encoder`: the VAE encoder's calls WITH autograd (SDS encodes every render through it
          and back-propagates; DreamBooth's and img2img's encodes, without autograd, stay eager:
          compiling them would cost more than they take).
        `backend` is torch.compile's (`eager` traces without generating code: for tests).
        `uncompile_models` undoes all of it.
        """
        import torch._dynamo

        self.uncompile_models()
        # shapes, grad modes and weight dtypes (training upcasts, `freeze` casts back) each compile
        # their own graph: allow more of them than dynamo's default 8 before it falls back to eager
        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, max(int(getattr(torch._dynamo.config, name)), 64))

        def compiled(module, mode):
            mode = None if mode == "default" or backend != "inductor" else mode  # a mode is inductor's
            return torch.compile(module, mode=mode, backend=backend)

        notes = []
        if unet_mode:
            self._compiled["unet"] = compiled(self.unet, unet_mode)
            notes.append(f"unet torch.compile(mode={unet_mode})")
        graphs = cudagraph_mode(cudagraphs)
        if graphs and self.device.type != "cuda":
            notes.append("unet without autograd: no CUDA graphs on " + self.device.type)
        elif graphs == "direct":
            from .graphs import CUDAGraphed

            self._compiled["unet_graphed"] = CUDAGraphed(self.unet, name=f"{self.name} unet")
            notes.append("unet without autograd: CUDA graphs captured directly (torch.cuda.CUDAGraph per input shape)")
        elif graphs == "compile":
            self._compiled["unet_graphed"] = compiled(self.unet, "reduce-overhead")
            notes.append("unet without autograd: torch.compile(mode=reduce-overhead) (CUDA graphs)")
        if vae_encoder and self.vae is not None:
            # as nn.Module.compile does (the module's call goes through `_compiled_call_impl`),
            # but only for calls with autograd on
            enc = self.vae.encoder
            fn = torch.compile(enc._call_impl, backend=backend)

            def grad_only(*args, **kwargs):
                return fn(*args, **kwargs) if torch.is_grad_enabled() else enc._call_impl(*args, **kwargs)
            enc._compiled_call_impl = grad_only
            notes.append("vae encoder with autograd: torch.compile(mode=default)")
        return notes

    def uncompile_models(self) -> None:
        """Back to the eager modules (what `compile_models` set up is dropped; dynamo's caches stay)."""
        self._graphs_stale()
        self._compiled = {}
        if self.vae is not None and getattr(self.vae.encoder, "_compiled_call_impl", None) is not None:
            self.vae.encoder._compiled_call_impl = None

    def _graphs_stale(self) -> None:
        """The UNet's structure or weights' storage changed: directly captured CUDA graphs (which
        replay the old forward on the old memory) are dropped and re-captured on the next calls."""
        graphed = (getattr(self, "_compiled", None) or {}).get("unet_graphed")
        if hasattr(graphed, "invalidate"):
            graphed.invalidate()

    def graph_stats(self) -> str | None:
        """What the directly captured CUDA graphs did so far (None when they are not in use)."""
        graphed = (getattr(self, "_compiled", None) or {}).get("unet_graphed")
        return graphed.describe() if hasattr(graphed, "describe") else None
