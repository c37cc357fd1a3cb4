"""The `sd` backend: Stable Diffusion 2.1-base (latent, 4x64x64, OpenCLIP-ViT-H text tower).

`models.sd` is a hub id (default `stabilityai/stable-diffusion-2-1-base`) or a local folder in
diffusers layout; with `HF_HUB_OFFLINE=1` only the local cache is read. SDS renders go through the
VAE encoder at 512 px, as stable-dreamfusion and threestudio do.

`models.sd: random` builds the full-size architecture with random weights from the configs below
(no download): the GPU benchmark uses it, since what a step costs does not depend on the weights.
Its tokenizer is open_clip's BPE, the vocabulary SD 2.x was trained with.
"""
from __future__ import annotations

import torch

from .base import DiffusionBackend
from .loading import cast, check_source, load_component, seeded_init
from .registry import register
from .tokenizer import HFTokenizer, OpenClipBPE

LABEL, KEY = "Stable Diffusion 2.1-base", "sd"

UNET = dict(sample_size=64, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True,
            freq_shift=0, down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2, downsample_padding=1, mid_block_scale_factor=1, act_fn="silu",
            norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
            use_linear_projection=True)

VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
           up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
           act_fn="silu", latent_channels=4, norm_num_groups=32, sample_size=512, scaling_factor=0.18215)

# OpenCLIP ViT-H/14 text tower as SD 2.x ships it (24 layers less the last: penultimate features).
TEXT_ENCODER = dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                    num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu", layer_norm_eps=1e-5,
                    projection_dim=512, bos_token_id=49406, eos_token_id=49407, pad_token_id=0)

SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")


def build_random_sd(device: torch.device, dtype: torch.dtype) -> DiffusionBackend:
    """Full-size SD 2.1-base with random weights, built directly on `device` (seeded)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with seeded_init(0, device):
        text_encoder = cast(CLIPTextModel(CLIPTextConfig(**TEXT_ENCODER)), dtype)
        vae = cast(AutoencoderKL(**VAE), dtype)
        unet = cast(UNet2DConditionModel(**UNET), dtype)
    return DiffusionBackend(name="sd", model_id="random", unet=unet, text_encoder=text_encoder, vae=vae,
                            tokenizer=OpenClipBPE(77), scheduler_config=SCHEDULER, image_size=512,
                            device=device, dtype=dtype)


@register(KEY, label=LABEL, config_key="models.sd", space="latent")
def load_sd(model_id: str, device: torch.device, dtype: torch.dtype) -> DiffusionBackend:
    """SD from a hub id or local folder (`random`: see `build_random_sd`)."""
    if model_id == "random":
        return build_random_sd(device, dtype)
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    check_source(LABEL, KEY, model_id)
    variant = {"variant": "fp16"} if dtype != torch.float32 else {}
    # Smallest first: a missing model fails on a JSON file, not after gigabytes.
    sched = load_component(LABEL, KEY, model_id, DDIMScheduler.load_config, "scheduler")
    tokenizer = load_component(LABEL, KEY, model_id, CLIPTokenizer.from_pretrained, "tokenizer")
    text_encoder = load_component(LABEL, KEY, model_id, CLIPTextModel.from_pretrained, "text_encoder",
                                  dtype=dtype, **variant)
    vae = load_component(LABEL, KEY, model_id, AutoencoderKL.from_pretrained, "vae", torch_dtype=dtype, **variant)
    unet = load_component(LABEL, KEY, model_id, UNet2DConditionModel.from_pretrained, "unet",
                          torch_dtype=dtype, **variant)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    return DiffusionBackend(name="sd", model_id=model_id, unet=unet, text_encoder=cast(text_encoder, dtype), vae=vae,
                            tokenizer=HFTokenizer(tokenizer, 77), scheduler_config=dict(sched),
                            image_size=int(unet.config.sample_size) * factor, device=device, dtype=dtype)
