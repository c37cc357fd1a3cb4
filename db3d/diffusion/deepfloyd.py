"""The `if` backend: DeepFloyd IF stage I (pixel space, 3x64x64, T5-v1.1-XXL text encoder).

`models.if` is a hub id (default `DeepFloyd/IF-I-XL-v1.0`, gated: accept its licence and log in
first) or a local folder in diffusers layout. Only stage I is used: SDS and DreamBooth work at
64x64, as threestudio's DeepFloyd guidance does. The UNet also predicts a variance (6 output
channels); only the epsilon half is used and trained (as diffusers' DreamBooth script for IF does).

`models.if: random` builds the full-size architecture with random weights (GPU benchmark only):
IF-I-XL's UNet (4.4 B parameters; the config is reconstructed from IF's published architecture,
model_channels 704, channel_mult 1-2-3-4, 3 res blocks, attention at 32/16/8 px, 64-dim heads,
text projection 4096 -> 4096) and T5-v1.1-XXL's encoder (4.76 B). Its tokenizer is
`tokenizer.T5StandIn` (CLIP BPE ids folded into T5's vocabulary range), because T5's
sentencepiece model ships with the weights.
"""
from __future__ import annotations

import torch

from .base import DiffusionBackend
from .loading import cast, check_source, load_component, seeded_init
from .registry import register
from .tokenizer import HFTokenizer, T5StandIn

LABEL, KEY = "DeepFloyd IF stage I", "if"

UNET = dict(sample_size=64, in_channels=3, out_channels=6, block_out_channels=(704, 1408, 2112, 2816),
            layers_per_block=3, down_block_types=("ResnetDownsampleBlock2D",) + ("SimpleCrossAttnDownBlock2D",) * 3,
            up_block_types=("SimpleCrossAttnUpBlock2D",) * 3 + ("ResnetUpsampleBlock2D",),
            mid_block_type="UNetMidBlock2DSimpleCrossAttn", cross_attention_dim=4096, attention_head_dim=64,
            encoder_hid_dim=4096, encoder_hid_dim_type="text_proj", addition_embed_type="text",
            addition_embed_type_num_heads=64, cross_attention_norm="group_norm",
            resnet_time_scale_shift="scale_shift", act_fn="gelu")

TEXT_ENCODER = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                    relative_attention_num_buckets=32, relative_attention_max_distance=128, dropout_rate=0.0,
                    layer_norm_epsilon=1e-6, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                    pad_token_id=0, eos_token_id=1)

SCHEDULER = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="epsilon",
                 variance_type="learned_range", thresholding=True, dynamic_thresholding_ratio=0.95,
                 sample_max_value=1.5, clip_sample=True)

UNET_LORA_TARGETS = ("to_k", "to_q", "to_v", "to_out.0", "add_k_proj", "add_v_proj")
TEXT_LORA_TARGETS = ("q", "k", "v", "o")


def build_random_if(device: torch.device, dtype: torch.dtype) -> DiffusionBackend:
    """Full-size IF-I-XL + T5-XXL encoder with random weights, built on `device` (seeded)."""
    from diffusers import UNet2DConditionModel
    from transformers import T5Config, T5EncoderModel

    with seeded_init(0, device):
        text_encoder = cast(T5EncoderModel(T5Config(**TEXT_ENCODER)), dtype)
        unet = cast(UNet2DConditionModel(**UNET), dtype)
    return DiffusionBackend(name="if", model_id="random", unet=unet, text_encoder=text_encoder,
                            tokenizer=T5StandIn(77), scheduler_config=SCHEDULER, image_size=64,
                            device=device, dtype=dtype, text_attention_mask=True,
                            unet_lora_targets=UNET_LORA_TARGETS, text_lora_targets=TEXT_LORA_TARGETS)


@register(KEY, label=LABEL, config_key="models.if", space="pixel")
def load_if(model_id: str, device: torch.device, dtype: torch.dtype) -> DiffusionBackend:
    """IF stage I from a hub id or local folder (`random`: see `build_random_if`)."""
    if model_id == "random":
        return build_random_if(device, dtype)
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, T5EncoderModel

    check_source(LABEL, KEY, model_id)
    variant = {"variant": "fp16"} if dtype != torch.float32 else {}
    sched = load_component(LABEL, KEY, model_id, DDPMScheduler.load_config, "scheduler")
    tokenizer = load_component(LABEL, KEY, model_id, AutoTokenizer.from_pretrained, "tokenizer")
    text_encoder = load_component(LABEL, KEY, model_id, T5EncoderModel.from_pretrained, "text_encoder",
                                  dtype=dtype, **variant)
    unet = load_component(LABEL, KEY, model_id, UNet2DConditionModel.from_pretrained, "unet",
                          torch_dtype=dtype, **variant)
    return DiffusionBackend(name="if", model_id=model_id, unet=unet, text_encoder=text_encoder,
                            tokenizer=HFTokenizer(tokenizer, 77), scheduler_config=dict(sched),
                            image_size=int(unet.config.sample_size), device=device, dtype=dtype,
                            text_attention_mask=True, unet_lora_targets=UNET_LORA_TARGETS,
                            text_lora_targets=TEXT_LORA_TARGETS)
