"""`DiffusionBackend`: one text-to-image diffusion model behind the interface the method needs.

All four backends (`sd`, `if`, `tiny`, `toy`) are the same four diffusers/transformers pieces
(UNet, text encoder, tokenizer, noise schedule, plus a VAE for latent models), so one class
implements every method and the backend modules only build or load the pieces and register the
loader (db3d.diffusion.registry). See docs/ARCHITECTURE.md. Two concerns live in mixins of their
own: the precision policy (db3d.diffusion.precision) and the compiled / CUDA-graphed UNet calls
(db3d.diffusion.compiling).

Conventions (why they are what they are):
- Images at the interface are float [B,3,H,W] in [0,1]; model space `x0` is VAE latents x scaling
  factor (latent models) or `2x-1` pixels (pixel models). Only `encode_images` crosses the line.
- Everything returned is float32, so callers never juggle half tensors (mixed precision on CUDA:
  db3d.diffusion.precision).
- Randomness comes from an optional `torch.Generator` (CPU or on the device); noise is drawn on the
  generator's device and moved, so a CPU generator gives the same numbers on CPU and CUDA.
- The noise schedule is the model's own (its scheduler config); `predict_noise` always returns
  epsilon (a v-prediction model is converted), so SDS and DDIM sampling are written once.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DataError
from .compiling import CompiledModels
from .loading import seeded_init
from .precision import PrecisionPolicy

VIEW_DIRECTIONS = ("front", "side", "back", "overhead")
_FORMAT = "db3d-finetuned-v1"


class DiffusionBackend(PrecisionPolicy, CompiledModels, nn.Module):
    """A text-conditioned epsilon-prediction diffusion model (latent or pixel space).

    Build it with `db3d.diffusion.build_backend(cfg)`; do not `.to()` it afterwards (device and
    dtype are fixed at construction and recorded in `device`/`dtype`).
    """

    def __init__(self, *, name: str, unet: nn.Module, text_encoder: nn.Module, tokenizer: Any,
                 scheduler_config: dict, image_size: int, device: torch.device, dtype: torch.dtype,
                 vae: nn.Module | None = None, text_attention_mask: bool = False,
                 unet_lora_targets: Sequence[str] = ("to_k", "to_q", "to_v", "to_out.0"),
                 text_lora_targets: Sequence[str] = ("q_proj", "k_proj", "v_proj", "out_proj"),
                 model_id: str = ""):
        super().__init__()
        from diffusers import DDIMScheduler

        self.name = name
        self.model_id = model_id
        self.device = torch.device(device)
        self.dtype = dtype
        self.unet = unet.to(self.device).eval()
        self.text_encoder = text_encoder.to(self.device).eval()
        self.vae = vae.to(self.device).eval() if vae is not None else None
        self.tokenizer = tokenizer
        self.text_attention_mask = text_attention_mask
        self.unet_lora_targets = list(unet_lora_targets)
        self.text_lora_targets = list(text_lora_targets)
        self.requires_grad_(False)

        self.scheduler_config = dict(scheduler_config)
        self.prediction_type = self.scheduler_config.get("prediction_type", "epsilon")
        schedule = DDIMScheduler.from_config(self.scheduler_config)
        self.num_train_timesteps = int(schedule.config.num_train_timesteps)
        self.register_buffer("alphas_cumprod", schedule.alphas_cumprod.float().to(self.device), persistent=False)

        self.image_size = int(image_size)
        self.is_latent = vae is not None
        if self.is_latent:
            factor = 2 ** (len(vae.config.block_out_channels) - 1)
            self.model_channels = int(vae.config.latent_channels)
            self.latent_size = self.image_size // factor
            self.scaling_factor = float(vae.config.scaling_factor)
        else:
            self.model_channels = 3
            self.latent_size = self.image_size
            self.scaling_factor = 1.0
        # The VAE runs in its own dtype, as diffusers' pipelines run it (not under autocast, which
        # would cast every GroupNorm to fp32 and back), with the classic attention processor: its
        # one attention layer (4096 tokens x 512 channels, one head, at 512 px) has no fused SDPA
        # backward kernel on Hopper (head dim > 256: a slow memory-efficient kernel, 5.9 ms per SDS
        # step). H200, SDS step at 64 px: 54.6 -> 45.6 ms, stage 3 65.5 -> 57.6 ms
        # (docs/performance.md; the bench's vae_attention / vae_autocast options undo either).
        self.vae_autocast = False
        if self.vae is not None:
            self.set_vae_attention("classic")
        self._finetune: dict | None = None  # {"lora_rank": int, "train_text_encoder": bool}
        self._compiled: dict[str, Any] = {}  # compile_models: {"unet": fn, "unet_graphed": fn}

    # ------------------------------------------------------------------ helpers
    def set_vae_attention(self, kind: str) -> None:
        """The VAE's attention processors: `sdpa` (diffusers' default, AttnProcessor2_0) or
        `classic` (AttnProcessor: matmul, softmax, matmul)."""
        from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

        if kind not in ("sdpa", "classic"):
            raise ValueError(f"VAE attention must be sdpa or classic, got {kind!r}")
        if self.vae is not None:
            self.vae.set_attn_processor(AttnProcessor() if kind == "classic" else AttnProcessor2_0())

    def _randn(self, shape: Sequence[int], generator: torch.Generator | None) -> torch.Tensor:
        if generator is None:
            return torch.randn(tuple(shape), device=self.device)
        return torch.randn(tuple(shape), generator=generator, device=generator.device).to(self.device)

    def _randint(self, low: int, high: int, n: int, generator: torch.Generator | None) -> torch.Tensor:
        if generator is None:
            return torch.randint(low, high, (n,), device=self.device)
        return torch.randint(low, high, (n,), generator=generator, device=generator.device).to(self.device)

    def _timesteps(self, t: Any, batch: int) -> torch.Tensor:
        t = torch.as_tensor(t, device=self.device).long().reshape(-1)
        if t.numel() == 1 and batch > 1:
            t = t.expand(batch)
        if t.numel() != batch:
            raise ValueError(f"got {t.numel()} timesteps for a batch of {batch}")
        return t

    @staticmethod
    def _batch(emb: torch.Tensor, batch: int) -> torch.Tensor:
        if emb.shape[0] == batch:
            return emb
        if emb.shape[0] == 1:
            return emb.expand(batch, *emb.shape[1:])
        raise ValueError(f"text embeddings of batch {emb.shape[0]} for {batch} images")

    def _abar(self, t: torch.Tensor) -> torch.Tensor:
        return self.alphas_cumprod[t].float().view(-1, 1, 1, 1)

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per component (for reports and the benchmark)."""
        parts = {"unet": self.unet, "text_encoder": self.text_encoder}
        if self.vae is not None:
            parts["vae"] = self.vae
        return {k: sum(p.numel() for p in m.parameters()) for k, m in parts.items()}

    # ------------------------------------------------------------------ contract
    def encode_text(self, prompts: Sequence[str] | str) -> torch.Tensor:
        """Per-token text embeddings [B, L, D] (the UNet's cross-attention context)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        ids, mask = self.tokenizer(prompts)
        kwargs = {"attention_mask": mask.to(self.device)} if self.text_attention_mask else {}
        trainable = any(p.requires_grad for p in self.text_encoder.parameters())
        # A frozen text encoder already holds the compute dtype (T5 keeps its own fp32 islands,
        # which autocast would undo); a trained one holds fp32 master weights -> autocast.
        with self._autocast(trainable):
            out = self.text_encoder(ids.to(self.device), **kwargs)[0]
        return out.float()

    def encode_images(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images in [0,1] -> model-space x0, resized to `image_size`. Differentiable.

        Latent models use the VAE posterior mean (deterministic, as SDS wants), or a posterior
        sample when a `generator` is given (as DreamBooth training does in diffusers).
        """
        x = images.to(self.device, torch.float32)
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=bool(x.shape[-1] > self.image_size))
        x = x * 2.0 - 1.0
        if not self.is_latent:
            return x
        with self._autocast(self.vae_autocast):
            dist = self.vae.encode(x if self.vae_autocast else x.to(self.vae.dtype)).latent_dist
            z = dist.sample(generator) if generator is not None else dist.mode()
        return z.float() * self.scaling_factor

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """Model-space x0 -> images [B,3,S,S] in [0,1]."""
        if self.is_latent:
            z = x0.to(self.device) / self.scaling_factor
            with self._autocast(self.vae_autocast):
                img = self.vae.decode(z if self.vae_autocast else z.to(self.vae.dtype)).sample
        else:
            img = x0
        return ((img.float() + 1.0) / 2.0).clamp(0.0, 1.0)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Forward process q(x_t | x0): sqrt(abar_t) x0 + sqrt(1 - abar_t) noise."""
        ab = self._abar(self._timesteps(t, x0.shape[0]))
        return ab.sqrt() * x0 + (1.0 - ab).sqrt() * noise

    def _unet(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Raw UNet call -> the model's own prediction (first `model_channels`: IF also predicts variance).
        After `compile_models`, through the compiled UNet (CUDA-graphed for calls without autograd)."""
        unet = self._unet_module()
        with self._autocast():
            out = unet(x, t, encoder_hidden_states=context).sample
        # a CUDA graph's output lives in its static pool and is overwritten by the next replay: copy
        # what a compiled UNet returns (2 x 4 x 64 x 64 values for SD's SDS call); the directly
        # captured graphs (graphs.CUDAGraphed) return copies already
        copy = unet is not self.unet and not getattr(unet, "copies_out", False)
        return out[:, : self.model_channels].to(torch.float32, copy=copy)

    def predict_noise(self, x_t: torch.Tensor, t: Any, cond: torch.Tensor,
                      uncond: torch.Tensor | None = None, guidance_scale: float = 1.0) -> torch.Tensor:
        """epsilon-hat(x_t, t, text). With `uncond`, classifier-free guidance in ONE UNet call on
        cat([uncond, cond]): eps_u + g (eps_c - eps_u)."""
        batch = x_t.shape[0]
        t = self._timesteps(t, batch)
        cond = self._batch(cond, batch)
        if uncond is not None:
            uncond = self._batch(uncond, batch).to(cond.dtype)
            x_in, t_in, c_in = torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([uncond, cond])
        else:
            x_in, t_in, c_in = x_t, t, cond
        out = self._unet(x_in, t_in, c_in)
        if self.prediction_type == "v_prediction":  # eps = sqrt(ab) v + sqrt(1-ab) x_t
            ab = self._abar(t_in)
            out = ab.sqrt() * out + (1.0 - ab).sqrt() * x_in.float()
        if uncond is not None:
            eps_u, eps_c = out.chunk(2)
            out = eps_u + guidance_scale * (eps_c - eps_u)
        return out

    @torch.no_grad()
    def sample(self, prompts: Sequence[str], num_steps: int = 50, guidance_scale: float = 7.5,
               generator: torch.Generator | None = None, init_images: torch.Tensor | None = None,
               strength: float | None = None) -> torch.Tensor:
        """DDIM (eta=0) text-to-image; with `init_images`, img2img as diffusers does it: noise the
        encoded images to step `strength * num_steps` of the schedule, then denoise from there.
        `strength=0` returns the inputs (resized) untouched. Returns [B,3,S,S] in [0,1]."""
        from diffusers import DDIMScheduler

        prompts = list(prompts)
        batch = len(prompts)
        cond = self.encode_text(prompts)
        uncond = self.encode_text([""] * batch) if guidance_scale != 1.0 else None
        sched = DDIMScheduler.from_config(self.scheduler_config, prediction_type="epsilon")
        sched.set_timesteps(int(num_steps), device=self.device)
        timesteps = sched.timesteps
        shape = (batch, self.model_channels, self.latent_size, self.latent_size)
        if init_images is not None:
            strength = 1.0 if strength is None else float(strength)
            if not 0.0 <= strength <= 1.0:
                raise ValueError(f"strength must be in [0, 1], got {strength}")
            if init_images.shape[0] != batch:
                raise ValueError(f"{init_images.shape[0]} init images for {batch} prompts")
            n_run = min(int(num_steps * strength), int(num_steps))
            timesteps = timesteps[len(timesteps) - n_run:] if n_run > 0 else timesteps[:0]
            if len(timesteps) == 0:
                img = init_images.to(self.device, torch.float32)
                return F.interpolate(img, size=(self.image_size,) * 2, mode="bilinear", align_corners=False,
                                     antialias=bool(img.shape[-1] > self.image_size)).clamp(0, 1)
            x0 = self.encode_images(init_images)
            x = self.add_noise(x0, self._randn(shape, generator), timesteps[:1].repeat(batch))
        else:
            x = self._randn(shape, generator) * sched.init_noise_sigma
        for t in timesteps:
            eps = self.predict_noise(x, t, cond, uncond, guidance_scale)
            # use_clipped_model_output: with clip_sample (pixel models), DDIM's next step must use
            # the epsilon implied by the CLIPPED x0; diffusers' default keeps the raw epsilon, and
            # when guidance overshoots [-1, 1] that epsilon points the other way. Measured on the
            # toy prior: guidance 6-10 sampled the complementary colour (a red mug came out green)
            # and 100 steps were worse than 30; consistent, both give clean class/colour samples.
            # Models without clip_sample (SD) compute the same either way.
            x = sched.step(eps, t, x, use_clipped_model_output=True).prev_sample
        return self.decode(x)

    def training_loss(self, images: torch.Tensor, prompts: Sequence[str],
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """Denoising loss per sample [B]: MSE between the UNet's prediction and its target
        (epsilon, or v for v-prediction models) at a uniformly random t in [0, T)."""
        prompts = list(prompts)
        x0 = self.encode_images(images, generator=generator if self.is_latent else None)
        if len(prompts) != x0.shape[0]:
            raise ValueError(f"{len(prompts)} prompts for {x0.shape[0]} images")
        noise = self._randn(x0.shape, generator)
        t = self._randint(0, self.num_train_timesteps, x0.shape[0], generator)
        x_t = self.add_noise(x0, noise, t)
        pred = self._unet(x_t, t, self.encode_text(prompts))
        if self.prediction_type == "v_prediction":
            ab = self._abar(t)
            target = ab.sqrt() * noise - (1.0 - ab).sqrt() * x0
        else:
            target = noise
        return ((pred - target) ** 2).mean(dim=(1, 2, 3))

    # ------------------------------------------------------------------ fine-tuning
    @staticmethod
    def _has_lora(module: nn.Module) -> bool:
        return any("lora_" in n for n, _ in module.named_parameters())

    def _add_lora(self, rank: int, text_encoder: bool) -> None:
        from peft import LoraConfig

        # LoRA A is drawn from the RNG: seed it so every stage/process adds identical adapters.
        with seeded_init(0, self.device):
            if not self._has_lora(self.unet):
                self.unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                                 target_modules=self.unet_lora_targets))
            if text_encoder and not self._has_lora(self.text_encoder):
                self.text_encoder.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                                         target_modules=self.text_lora_targets))
        self.unet.to(self.device)
        self.text_encoder.to(self.device)
        self._graphs_stale()

    def _finetuned_names(self) -> dict[str, nn.Parameter]:
        spec = self._finetune or {"lora_rank": 0, "train_text_encoder": False}
        modules = {"unet": self.unet}
        if spec["train_text_encoder"]:
            modules["text_encoder"] = self.text_encoder
        out = {}
        for prefix, module in modules.items():
            for n, p in module.named_parameters():
                if spec["lora_rank"] == 0 or "lora_" in n:
                    out[f"{prefix}.{n}"] = p
        return out

    def trainable_parameters(self, train_text_encoder: bool = False, lora_rank: int = 0) -> list[nn.Parameter]:
        """Mark what DreamBooth trains and return it: the whole UNet (+ text encoder), or with
        `lora_rank > 0` only LoRA adapters on the attention projections (peft, via `add_adapter`).
        Trained parameters are upcast to fp32 (mixed-precision master weights)."""
        lora_rank = int(lora_rank)
        if lora_rank == 0 and self._has_lora(self.unet):
            raise ValueError("this backend carries LoRA adapters; full fine-tuning on top of them is not supported")
        if lora_rank > 0:
            self._add_lora(lora_rank, bool(train_text_encoder))
        self._finetune = {"lora_rank": lora_rank, "train_text_encoder": bool(train_text_encoder)}
        self.requires_grad_(False)
        params = list(self._finetuned_names().values())
        self._upcast_trained(params)
        self._graphs_stale()
        return params

    def freeze(self) -> None:
        """Back to inference: nothing requires grad, trained fp32 master weights return to the
        compute dtype (so SDS after DreamBooth runs as fast and small as on the base model)."""
        self.requires_grad_(False)
        self._downcast_trained(self._finetuned_names().values())
        self._graphs_stale()

    def finetuned_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights fine-tuning changes (names prefixed `unet.` / `text_encoder.`)."""
        return {k: p.detach() for k, p in self._finetuned_names().items()}

    def save_finetuned(self, path: str | Path) -> None:
        """Write the fine-tuned weights (only those) to a safetensors file, with what they are in its
        metadata so `load_finetuned` can rebuild LoRA adapters before loading them."""
        from safetensors.torch import save_file

        spec = self._finetune or {"lora_rank": 0, "train_text_encoder": False}
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.finetuned_state_dict().items()}
        meta = {"format": "pt", "db3d": _FORMAT, "backend": self.name, "model": self.model_id,
                "lora_rank": str(spec["lora_rank"]), "train_text_encoder": str(int(spec["train_text_encoder"]))}
        save_file(tensors, str(path), metadata=meta)

    def load_finetuned(self, path: str | Path) -> None:
        """Load weights written by `save_finetuned` (adds the LoRA adapters first when needed)."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_file():
            raise DataError(f"fine-tuned checkpoint {path} does not exist; run the dreambooth stage first")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("db3d") != _FORMAT or meta.get("backend") != self.name:
            raise DataError(f"{path}: not a db3d fine-tuned checkpoint of backend {self.name!r} "
                            f"(its backend: {meta.get('backend')!r}); re-run the dreambooth stage")
        rank, tte = int(meta.get("lora_rank", 0)), meta.get("train_text_encoder") == "1"
        if rank > 0:
            self._add_lora(rank, tte)
        elif self._has_lora(self.unet):
            raise DataError(f"{path}: full fine-tuned weights cannot be loaded into a backend carrying LoRA adapters")
        self._finetune = {"lora_rank": rank, "train_text_encoder": tte}
        targets = self._finetuned_names()
        tensors = load_file(str(path), device="cpu")
        bad = [k for k, v in tensors.items() if k not in targets or tuple(targets[k].shape) != tuple(v.shape)]
        if bad:
            raise DataError(f"{path}: {len(bad)} weights do not fit this model (first: {bad[0]}); "
                            f"it was trained for another model ({meta.get('model')!r})")
        with torch.no_grad():
            for k, v in tensors.items():
                targets[k].copy_(v)

    def gradient_checkpointing(self, enabled: bool = True) -> None:
        """Trade compute for memory in UNet training (full SD / IF fine-tuning on one GPU)."""
        if enabled:
            self.unet.enable_gradient_checkpointing()
        else:
            self.unet.disable_gradient_checkpointing()
        self._graphs_stale()

    @staticmethod
    def view_prompt(prompt: str, direction: str) -> str:
        """DreamFusion's view-dependent prompting: `<prompt>, <direction> view`."""
        d = direction.strip().lower()
        d = d[: -len(" view")] if d.endswith(" view") else d
        if d not in VIEW_DIRECTIONS:
            raise ValueError(f"view direction {direction!r}: expected one of {', '.join(VIEW_DIRECTIONS)}")
        return f"{prompt}, {d} view"
