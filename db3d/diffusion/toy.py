"""The `toy` backend: a small pixel-space (IF-like) text-to-image model TRAINED on synthetic renders.

Why it exists: `tiny` has random weights, so offline runs test plumbing only. `toy` is the same
kind of model (diffusers `UNet2DConditionModel` with cross-attention, transformers `CLIPTextModel`,
open_clip's BPE, DDPM/DDIM schedule) small enough to be trained from scratch on 2 CPU cores in
minutes (`db3d.synth.prior.train_prior`, rule `toy_prior`) on renders of synthetic objects
(`db3d.synth.world.prior_dataset`: mugs, snowmen, houses in a few colours, captions such as
"a red mug, back view"). Its samples are recognisable at 32 px, so the method's stages (class
priors, DreamBooth, SDS, img2img pseudo views) do something meaningful offline.

- Pixel space, 3x32x32, v-prediction, cosine (`squaredcos_cap_v2`) schedule with
  `clip_sample` (x0 clipped to [-1, 1] in DDIM, as pixel models need).
- Text conditioning twice: cross-attention at 8x8, and the attention-pooled tokens added to the
  timestep embedding, which FiLM-modulates every ResNet block (`UNET` below says why).
- Text: CLIP BPE with a 24-token context (the prior's captions are ~10 tokens; DreamBooth's
  "a sks mug, back view" fits, and "sks" is in the vocabulary, learnt later by fine-tuning).
- Checkpoint folder (default `models/toy`): `model.safetensors` (UNet weights `unet.*`, text
  encoder weights `text_encoder.*`; the architecture and training meta in its metadata, so one
  atomic file is the whole model) and `config.json` (the same architecture + meta, for people).

The backend is the shared `DiffusionBackend`; only construction, saving and loading live here.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from ..errors import ModelNotFoundError
from ..io import atomic_path
from .base import DiffusionBackend
from .loading import cast, seeded_init
from .registry import register
from .tokenizer import OpenClipBPE

IMAGE_SIZE = 32
CONTEXT_LENGTH = 24
FORMAT = "db3d-toy-v1"
METADATA_KEY = "db3d_toy"  # safetensors metadata: JSON {format, architecture, meta}
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TRAIN_MINUTES = 20  # default prior config on 2 CPU cores (see db3d/synth/prior.py)

TEXT_ENCODER = dict(vocab_size=49408, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                    num_attention_heads=4, max_position_embeddings=CONTEXT_LENGTH, hidden_act="gelu",
                    projection_dim=64, bos_token_id=49406, eos_token_id=49407, pad_token_id=0)

# 32x32 -> 16x16 -> 8x8: plain ResNet blocks at 32x32 and 16x16, cross-attention (+ self-attention)
# at 8x8 in the down path, the middle and the up path. Widths are multiples of 32: on CPU oneDNN's
# convolutions at 16 or 24 channels were measured slower than at 32 (2-core AMD EPYC).
# `addition_embed_type="text"`: the text tokens, attention-pooled, are added to the timestep
# embedding, and `scale_shift` makes every ResNet block FiLM-modulated by it (as in DeepFloyd IF):
# colour and class are global attributes. Measured (default prior config, 2 CPU cores): with
# cross-attention alone (and CLIP's 0.02 token init, below) the 1100-step prior ignored the colour
# word ("a red mug" came out blue or orange); with the pooled path and unit token init a 400-step
# prior's sample grid already has the caption's colour in all 24 cells.
UNET = dict(sample_size=IMAGE_SIZE, in_channels=3, out_channels=3, block_out_channels=(32, 64, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
            cross_attention_dim=TEXT_ENCODER["hidden_size"], attention_head_dim=32,
            use_linear_projection=True, norm_num_groups=8,
            addition_embed_type="text", addition_embed_type_num_heads=2, resnet_time_scale_shift="scale_shift")

# CLIP initialises token embeddings with std 0.02, as small as the position embeddings: from
# scratch, "a red mug" and "a blue mug" then encode to nearly the same vectors and the UNet learns
# to ignore them. Unit-variance token embeddings (init only) make the words tell apart at once.
TOKEN_EMBEDDING_STD = 1.0

# v-prediction, not epsilon: the cosine schedule ends at abar ~ 2e-9, where an epsilon model's implied
# x0 = (x_t - sqrt(1-abar) eps) / sqrt(abar) amplifies its error ~2e4-fold. Measured: an epsilon prior
# (1000 steps) denoised renders well from t = 500-800 (img2img) but sampled saturated colour patchwork
# from pure noise; v = sqrt(abar) eps - sqrt(1-abar) x0 keeps x0 well-conditioned at every t.
SCHEDULER = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                 clip_sample=True, clip_sample_range=1.0, set_alpha_to_one=False, steps_offset=1)


def architecture() -> dict:
    """Everything needed to rebuild the (untrained) model: stored with every checkpoint."""
    return {"format": FORMAT, "image_size": IMAGE_SIZE, "context_length": CONTEXT_LENGTH,
            "text_encoder": dict(TEXT_ENCODER), "token_embedding_std": TOKEN_EMBEDDING_STD,
            "unet": {k: list(v) if isinstance(v, tuple) else v for k, v in UNET.items()},
            "scheduler": dict(SCHEDULER)}


def _build(arch: dict, device: torch.device | str, dtype: torch.dtype, seed: int, model_id: str) -> DiffusionBackend:
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    device = torch.device(device)
    with seeded_init(seed, "cpu"):  # CPU draws: identical weights on every device
        text_encoder = CLIPTextModel(CLIPTextConfig(**arch["text_encoder"]))
        with torch.no_grad():
            text_encoder.get_input_embeddings().weight.normal_(0.0, float(arch.get("token_embedding_std", 0.02)))
        unet = UNet2DConditionModel(**{k: tuple(v) if isinstance(v, list) else v for k, v in arch["unet"].items()})
    for module in (text_encoder, unet):
        cast(module.to(device), dtype)
    if device.type == "cpu":  # oneDNN's NHWC convolutions: measured 1.2-2x faster at these widths
        unet.to(memory_format=torch.channels_last)
    return DiffusionBackend(
        name="toy", model_id=model_id, unet=unet, text_encoder=text_encoder, vae=None,
        tokenizer=OpenClipBPE(context_length=int(arch["context_length"])),
        scheduler_config=arch["scheduler"], image_size=int(arch["image_size"]), device=device, dtype=dtype)


def new_toy(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0) -> DiffusionBackend:
    """An untrained toy backend (weights drawn under `seed`), to be trained by `train_prior`."""
    return _build(architecture(), device, dtype, seed, model_id=f"toy-untrained-seed{seed}")


def toy_state_dict(backend: DiffusionBackend) -> dict[str, torch.Tensor]:
    """The weights a toy checkpoint holds (`unet.*`, `text_encoder.*`), on CPU, contiguous, fp32."""
    out = {}
    for prefix, module in (("unet", backend.unet), ("text_encoder", backend.text_encoder)):
        for k, v in module.state_dict().items():
            out[f"{prefix}.{k}"] = v.detach().to("cpu", torch.float32).contiguous()
    return out


def save_toy(backend: DiffusionBackend, folder: str | Path, meta: dict | None = None,
             state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write `folder/model.safetensors` (+ `folder/config.json`) atomically; returns the weights path.

    `state` overrides the backend's own weights (the prior trainer saves its EMA weights this way).
    The architecture and `meta` go into the safetensors metadata too: the weights file alone is the model.
    """
    folder = Path(folder)
    path = folder / WEIGHTS_FILE
    with atomic_path(path) as tmp:
        sha = write_weights(backend, tmp, meta, state)
        write_config(folder, meta, sha)
    return path


def write_weights(backend: DiffusionBackend, path: str | Path, meta: dict | None = None,
                  state: dict[str, torch.Tensor] | None = None) -> str:
    """The safetensors file itself (not atomic: callers wrap it in `atomic_path`); returns its sha256."""
    from safetensors.torch import save_file

    tensors = toy_state_dict(backend) if state is None else {k: v.detach().to("cpu", torch.float32).contiguous()
                                                             for k, v in state.items()}
    # ONE metadata key: safetensors writes its metadata map in hash order, which differs between
    # processes, so several keys would make the same weights hash differently run to run.
    text = json.dumps({"format": FORMAT, "architecture": architecture(), "meta": dict(meta or {})},
                      sort_keys=True, default=str)
    save_file(tensors, str(path), metadata={METADATA_KEY: text})
    return file_sha256(path)


def write_config(folder: str | Path, meta: dict | None, sha256: str) -> None:
    """`folder/config.json`: architecture, meta and the weights' sha256 (human-readable copy)."""
    info = {"architecture": architecture(), "meta": dict(meta or {}), "sha256": sha256}
    with atomic_path(Path(folder) / CONFIG_FILE) as tmp:
        tmp.write_text(json.dumps(info, indent=2, sort_keys=True, default=str) + "\n")


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _missing(path: Path) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"toy model not found: {path} does not exist; fetch the versioned checkpoint with "
        f"`dvc pull models/toy.dvc` (from models/dvc-remote/, committed: no set-up), or train it with `snakemake --cores all models/toy/model.safetensors` "
        f"(~{TRAIN_MINUTES} min on 2 CPU cores), or set models.toy to a folder holding {WEIGHTS_FILE}")


def _corrupt(path: Path, why: str) -> ModelNotFoundError:
    why = " ".join(str(why).split())[:200]
    return ModelNotFoundError(
        f"toy model {path} is unusable ({why}); delete it and fetch it again with `dvc pull models/toy.dvc` "
        f"or retrain it with `snakemake --cores all --forcerun toy_prior models/toy/model.safetensors`")


# toy_prior keys that do not change the weights (only samples.png and the log): a checkpoint
# trained with other values of these is not stale
SAMPLE_ONLY_KEYS = ("sample_steps", "guidance_scale", "log_every")


def _check_provenance(path: Path, sha: str, arch: dict, meta: dict, expected_sha256: str | None,
                      prior_cfg: dict | None) -> None:
    """One-line `ModelNotFoundError` when the checkpoint is not the one the config asks for: another
    sha256 than `models.toy_sha256` pins, another resolution than `toy_prior.resolution`, or trained
    with other `toy_prior` values (stale)."""
    retrain = "snakemake --cores all --forcerun toy_prior models/toy/model.safetensors"
    if expected_sha256 and sha != expected_sha256:
        raise ModelNotFoundError(
            f"toy model {path} has sha256 {sha[:16]}... but models.toy_sha256 pins {expected_sha256[:16]}...: "
            f"fetch the pinned prior with `dvc pull models/toy.dvc`, or use this one by setting models.toy_sha256: "
            f"{sha} (every stage made with the other prior then re-runs)")
    if prior_cfg is None:
        return
    from ..synth.prior import default_prior_cfg, resolve_prior_cfg  # here: db3d.synth.prior imports this module

    size, want = int(arch.get("image_size", IMAGE_SIZE)), int({**default_prior_cfg(), **prior_cfg}["resolution"])
    if size != want:
        raise ModelNotFoundError(
            f"toy model {path} was trained at {size} px but the config's toy_prior.resolution is {want}: "
            f"fetch or train the prior for this config (`dvc pull models/toy.dvc` or `{retrain}`), or set "
            f"toy_prior.resolution: {size}")
    trained = (meta.get("meta") or {}).get("prior_cfg")
    if not isinstance(trained, dict):
        return  # saved by save_toy (tests), not by the prior's training: no recipe to compare
    want_cfg = resolve_prior_cfg(prior_cfg)
    diff = [k for k in sorted(set(want_cfg) | set(trained)) if k not in SAMPLE_ONLY_KEYS
            and want_cfg.get(k) != trained.get(k)]
    if diff:
        pairs = ", ".join(f"{k} {trained.get(k)!r} (config: {want_cfg.get(k)!r})" for k in diff)
        raise ModelNotFoundError(
            f"toy model {path} is stale: trained with toy_prior {pairs}; retrain it with `{retrain}`, fetch the "
            f"prior of this config with `dvc pull models/toy.dvc`, or set those toy_prior values back")


@register("toy", label="toy prior (trained on synthetic renders)", config_key="models.toy", space="pixel",
          also_keys=("models.toy_sha256",), selected_keys=("toy_prior",),
          options=lambda cfg: dict(expected_sha256=cfg["models"]["toy_sha256"], prior_cfg=cfg["toy_prior"]))
def load_toy(folder: str | Path, device: torch.device | str = "cpu",
             dtype: torch.dtype = torch.float32, *, expected_sha256: str | None = None,
             prior_cfg: dict | None = None) -> DiffusionBackend:
    """The trained toy backend from `folder/model.safetensors` (or that file given directly).

    Missing file -> `ModelNotFoundError` naming it and the ways to get it; a corrupt file or one
    of another architecture -> `ModelNotFoundError` too (one line each). `expected_sha256` (config
    `models.toy_sha256`) and `prior_cfg` (config `toy_prior`), when given, must match the file
    (`_check_provenance`)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    folder = Path(folder).expanduser()
    path = folder if folder.suffix == ".safetensors" else folder / WEIGHTS_FILE
    if not path.is_file():
        raise _missing(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises several classes for truncated / garbage files
        raise _corrupt(path, f"{type(exc).__name__}: {str(exc).strip()[:120]}") from None
    try:
        info = json.loads(meta[METADATA_KEY])
        fmt, arch = info.get("format"), info["architecture"]
    except (KeyError, ValueError, TypeError, AttributeError):
        raise _corrupt(path, f"not a {FORMAT} checkpoint (no {METADATA_KEY!r} metadata)") from None
    if fmt != FORMAT:
        raise _corrupt(path, f"not a {FORMAT} checkpoint (format {fmt!r})")
    sha = file_sha256(path)
    _check_provenance(path, sha, arch, info, expected_sha256, prior_cfg)
    backend = _build(arch, device, dtype, seed=0, model_id=f"toy-{sha[:12]}")
    try:
        for prefix, module in (("unet", backend.unet), ("text_encoder", backend.text_encoder)):
            part = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
            module.load_state_dict(part, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _corrupt(path, f"weights do not fit its architecture: {first}") from None
    if dtype != torch.float32:
        for module in (backend.unet, backend.text_encoder):
            cast(module, dtype)
    backend.sha256 = sha
    return backend
