"""CLIP models for evaluation: the real OpenAI CLIPs through open_clip, or tiny random stand-ins.

`load_clip("ViT-B-16", offline_tiny=False)` loads open_clip's `ViT-B-16` with the `openai`
weights (the models the DreamBooth3D paper evaluates with: ViT-B/16, ViT-B/32, ViT-L/14). A
config entry may also be `NAME=/path/to/checkpoint` (an open_clip state dict, e.g.
`open_clip_pytorch_model.bin`), which is loaded instead of the hub weights. If the weights cannot
be had (no network, empty cache) it raises `ModelNotFoundError` with one line saying how to
provide them. `DB3D_CLIP_CACHE` (optional) names the download/cache folder passed to open_clip.

`load_clip("ViT-B-16", offline_tiny=True)` (used with the offline backends, `cfg["backend"]` toy
or tiny: db3d.eval.run) builds a small CLIP *with random weights* from an open_clip config written
here (ViT width 64, 2 layers, patch 8, 64 px; text width 64, 2 layers; embedding 64), seeded from
the name so that
`tiny-random(ViT-B-16)` and `tiny-random(ViT-B-32)` differ but each is the same on every run.
Its `label` is `tiny-random(<name>)` and every number computed with it must carry that label:
such numbers say nothing about the method.
"""
from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ModelNotFoundError

# CLIP's normalisation (OpenAI CLIP, also open_clip's OPENAI_DATASET_MEAN/STD).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# The random-init stand-in: the real towers' architecture at toy width.
TINY_EMBED_DIM = 64
TINY_VISION = dict(width=64, layers=2, head_width=32, patch_size=8, image_size=64)
TINY_TEXT = dict(width=64, heads=2, layers=2, context_length=77, vocab_size=49408)


# How to provide a hub model offline; shared by every evaluation model's one-line error.
HUB_HINT = ("running once online to fill the Hugging Face cache (HF_HOME, then HF_HUB_OFFLINE=1 uses only "
            "the cache)")


def tiny_label(name: str) -> str:
    return f"tiny-random({name})"


def name_seed(name: str, kind: str = "clip") -> int:
    """The seed of the tiny stand-in for `name` (one fixed network per name and model kind)."""
    return zlib.crc32(f"db3d-tiny-{kind}:{name}".encode())


def one_line(why: object, limit: int = 200) -> str:
    """An exception text squeezed onto one line of at most `limit` characters."""
    why = " ".join(str(why).split())
    return why if len(why) <= limit else why[:limit - 1] + "\u2026"


def prepare_images(images: torch.Tensor, size: int, mean: tuple, std: tuple,
                   device: torch.device) -> torch.Tensor:
    """[B,3,H,W] in [0,1] -> resized to size x size and normalised with mean/std, on `device`.

    The models' own preprocessing resizes the short side then centre-crops; renders and subject
    photos are square, so a plain (antialiased, bicubic) resize is the same thing.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"encode_images expects [B,3,H,W] images, got {tuple(images.shape)}")
    x = images.to(device, torch.float32).clamp(0, 1)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    m = torch.tensor(mean, device=device, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, device=device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s


class ImageEncoder:
    """What the evaluation's image encoders (`ClipModel`, `dino.DinoModel`) share: moving to a device
    and batched, preprocessed, L2-normalised embeddings (float32, on CPU) from a model call."""

    model: Any
    image_size: int
    device: torch.device
    mean: tuple
    std: tuple

    def to(self, device: str | torch.device):
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def _embed(self, images: torch.Tensor, batch_size: int, forward) -> torch.Tensor:
        out = []
        for chunk in images.split(batch_size):
            x = prepare_images(chunk, self.image_size, self.mean, self.std, self.device)
            out.append(F.normalize(forward(x).float(), dim=-1).cpu())
        return torch.cat(out)


@dataclass
class ClipModel(ImageEncoder):
    """A CLIP image/text encoder pair with the preprocessing done in torch.

    `name` is the requested open_clip name, `label` what tables and plots print
    (`ViT-B-16` or `tiny-random(ViT-B-16)`), `random_weights` True for the tiny stand-in.
    """

    name: str
    label: str
    model: Any
    tokenizer: Any
    image_size: int
    random_weights: bool
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    mean: tuple = CLIP_MEAN
    std: tuple = CLIP_STD

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """[B,3,H,W] in [0,1] -> L2-normalised embeddings [B,D] (float32, on CPU)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"encode_images expects [B,3,H,W] images, got {tuple(images.shape)}")
        return self._embed(images, batch_size, self.model.encode_image)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """list of prompts -> L2-normalised embeddings [P,D] (float32, on CPU)."""
        if isinstance(texts, str):
            texts = [texts]
        tokens = self.tokenizer(list(texts)).to(self.device)
        emb = self.model.encode_text(tokens).float()
        return F.normalize(emb, dim=-1).cpu()


def _name_seed(name: str) -> int:
    return name_seed(name, "clip")


def build_tiny_clip(name: str) -> ClipModel:
    """The random-weight stand-in for `name`; no file or network access."""
    import open_clip
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_name_seed(name))
        model = CLIP(embed_dim=TINY_EMBED_DIM, vision_cfg=CLIPVisionCfg(**TINY_VISION),
                     text_cfg=CLIPTextCfg(**TINY_TEXT))
    model.eval()
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=TINY_TEXT["context_length"])
    return ClipModel(name=name, label=tiny_label(name), model=model, tokenizer=tokenizer,
                     image_size=TINY_VISION["image_size"], random_weights=True)


def _split_entry(entry: str) -> tuple[str, str | None]:
    """`ViT-B-16` -> ("ViT-B-16", None); `ViT-B-16=/ckpt.bin` -> ("ViT-B-16", "/ckpt.bin")."""
    if "=" in entry:
        name, path = entry.split("=", 1)
        return name.strip(), path.strip()
    return entry.strip(), None


def _fail(name: str, why: str) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"CLIP model {name} (open_clip, pretrained='openai') is not available ({one_line(why)}); provide it by "
        f"{HUB_HINT}, or set models.clip to '{name}=/path/to/open_clip_pytorch_model.bin', "
        f"or use backend: toy or tiny for random stand-ins")


def load_real_clip(entry: str, cache_dir: str | None = None) -> ClipModel:
    import logging

    import open_clip
    from open_clip import pretrained as oc_pretrained

    name, ckpt = _split_entry(entry)
    if name not in open_clip.list_models():
        raise ModelNotFoundError(f"CLIP model {name!r} is not an open_clip model name; use one of "
                                 f"ViT-B-16, ViT-B-32, ViT-L-14 (open_clip.list_models())")
    cache_dir = cache_dir or os.environ.get("DB3D_CLIP_CACHE")
    log = logging.getLogger("root")
    level = log.level
    try:
        log.setLevel(logging.CRITICAL)  # open_clip logs its own ERROR line before raising
        if ckpt is not None:
            if not Path(ckpt).is_file():
                raise _fail(name, f"checkpoint {ckpt} does not exist")
            model, _, _ = open_clip.create_model_and_transforms(name, pretrained=ckpt, device="cpu")
        else:
            # Fetch (or find in the cache) the weights before building the model, so that a
            # missing file fails in seconds even for ViT-L-14.
            pcfg = oc_pretrained.get_pretrained_cfg(name, "openai")
            if not pcfg:
                raise _fail(name, "open_clip has no 'openai' weights for this name")
            oc_pretrained.download_pretrained(pcfg, cache_dir=cache_dir)
            model, _, _ = open_clip.create_model_and_transforms(name, pretrained="openai", device="cpu",
                                                                cache_dir=cache_dir)
    except ModelNotFoundError:
        raise
    except Exception as e:  # hub/network/cache errors come in many types
        first = str(e).splitlines()[0] if str(e) else ""
        raise _fail(name, f"{type(e).__name__}: {first}") from None
    finally:
        log.setLevel(level)
    model.eval()
    size = model.visual.image_size
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    pre = getattr(model.visual, "preprocess_cfg", None) or {}
    return ClipModel(name=name, label=name, model=model, tokenizer=open_clip.get_tokenizer(name),
                     image_size=size, random_weights=False,
                     mean=tuple(pre.get("mean", CLIP_MEAN)), std=tuple(pre.get("std", CLIP_STD)))


def load_clip(name: str, offline_tiny: bool = True, device: str | torch.device | None = None) -> ClipModel:
    """A CLIP for evaluation: the tiny random stand-in (`offline_tiny=True`) or the real one."""
    clip = build_tiny_clip(_split_entry(name)[0]) if offline_tiny else load_real_clip(name)
    if device is not None:
        clip.to(device)
    return clip
