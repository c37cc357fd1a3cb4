"""The `tiny` backend: SD's / IF's architectures at about a million parameters each, random weights.

Why it exists: the whole workflow (class priors, DreamBooth, SDS on a NeRF, img2img pseudo views,
evaluation) must run offline on 2 CPU cores in minutes, through exactly the code paths the real
models use (diffusers UNet2DConditionModel with cross-attention, transformers CLIPTextModel,
open_clip's BPE, an AutoencoderKL for the latent path, DDIM). Its images are NOISE and its numbers
say nothing about the method: it tests plumbing, determinism and cost, never quality.

- `models.tiny_space: latent` (SD-like): 64 px images, AutoencoderKL x4 down -> 4x16x16 latents.
- `models.tiny_space: pixel` (IF-like): the UNet works on 3x64x64 pixels directly.

Weights are drawn under a fixed seed (0) whatever the experiment seed, so every stage of a run,
and every run, sees the same base model (DreamBooth checkpoints only store what training changed).
"""
from __future__ import annotations

import torch

from .base import DiffusionBackend
from .loading import cast, seeded_init
from .registry import register
from .tokenizer import OpenClipBPE

IMAGE_SIZE = 64
BASE_SEED = 0

TEXT_ENCODER = dict(vocab_size=49408, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                    num_attention_heads=4, max_position_embeddings=77, hidden_act="gelu",
                    projection_dim=64, bos_token_id=49406, eos_token_id=49407, pad_token_id=0)

# Latent UNet (16x16 in): cross-attention at 8x8, SD 2.x style linear projections.
UNET_LATENT = dict(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64),
                   layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                   up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=64,
                   attention_head_dim=4, use_linear_projection=True, norm_num_groups=32)

# Pixel UNet (64x64 in): narrow at full resolution and attention only at 16x16, to stay ~30 ms/call.
UNET_PIXEL = dict(sample_size=64, in_channels=3, out_channels=3, block_out_channels=(16, 32, 64),
                  layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
                  up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"), cross_attention_dim=64,
                  attention_head_dim=4, use_linear_projection=True, norm_num_groups=8)

VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
           up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(32, 32, 64), layers_per_block=1,
           latent_channels=4, norm_num_groups=32, sample_size=IMAGE_SIZE, scaling_factor=0.18215)

# SD 2.x's schedule for the latent model, IF's (cosine, dynamic thresholding) for the pixel model.
SCHEDULER_LATENT = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                        beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                        steps_offset=1, prediction_type="epsilon")
SCHEDULER_PIXEL = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="epsilon",
                       thresholding=True, dynamic_thresholding_ratio=0.95, sample_max_value=1.5,
                       clip_sample=True, set_alpha_to_one=False, steps_offset=1)


@register("tiny", label="tiny random-weight models", config_key="models.tiny_space",
          space=lambda cfg: cfg["models"]["tiny_space"])
def build_tiny(space: str, device: torch.device, dtype: torch.dtype) -> DiffusionBackend:
    """A tiny random-weight backend in `latent` or `pixel` space (same weights on every call)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if space not in ("latent", "pixel"):
        raise ValueError(f"tiny_space must be latent or pixel, got {space!r}")
    latent = space == "latent"
    with seeded_init(BASE_SEED, "cpu"):  # CPU draws: identical weights on every device
        text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_ENCODER))
        unet = UNet2DConditionModel(**(UNET_LATENT if latent else UNET_PIXEL))
        vae = AutoencoderKL(**VAE) if latent else None
    for module in (text_encoder, unet, vae):
        if module is not None:
            cast(module.to(device), dtype)
    return DiffusionBackend(
        name="tiny", model_id=f"tiny-{space}", unet=unet, text_encoder=text_encoder, vae=vae,
        tokenizer=OpenClipBPE(context_length=TEXT_ENCODER["max_position_embeddings"]),
        scheduler_config=SCHEDULER_LATENT if latent else SCHEDULER_PIXEL,
        image_size=IMAGE_SIZE, device=device, dtype=dtype)
