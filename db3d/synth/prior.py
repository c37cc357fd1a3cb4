"""Train the `toy` backend (db3d/diffusion/toy.py) from scratch on renders of synthetic objects.

`train_prior(prior_cfg, camera_cfg, out_dir)` renders `db3d.synth.world.prior_dataset` (images of
mugs, snowmen, houses in several colours from random cameras, with captions such as
"a red mug, back view"), trains the UNet and the text encoder jointly on the denoising (v) loss of
`DiffusionBackend.training_loss` (the very code DreamBooth fine-tunes with later), and writes to
`out_dir`, each file atomically:

- `model.safetensors` + `config.json`: the EMA weights (what `load_toy` loads), written LAST, so
  its presence means the others are there too;
- `samples.png`: a labelled grid, rows = classes, columns = colours x {front, back} view, sampled
  with DDIM (`sample_steps`) and classifier-free guidance (`guidance_scale`) from fixed noise;
- `train_log.json`: {steps, batch_size, num_images, wall_time_s, device, threads, loss_curve
  [[step, mean loss of the last `log_every` steps], ...], final_loss, prior_cfg, sha256, ...}.

Training: AdamW (betas 0.9/0.999, weight decay 1e-2, grad-norm clip 1), linear warm-up then cosine
decay to 0, EMA of the weights with diffusers' warm-up (decay min(ema_decay, (1+s)/(10+s))).
`caption_dropout` of the captions are replaced by "" so the model also learns the unconditional
prediction classifier-free guidance needs.

Determinism: all randomness of step s (which images, which captions are dropped, noise, t) comes
from generators seeded by (seed, s), as in db3d.dreambooth, so a run is reproducible from its seed
and a resumed run is bit-identical to an uninterrupted one. A resume state (weights, EMA, AdamW,
losses) is written atomically to `out_dir/resume_state.pt` every `resume_every_s` seconds
(default 5 min) and removed when training has finished.
"""
from __future__ import annotations

import copy
import functools
import logging
import math
import sys
import time
from pathlib import Path
from typing import Sequence

import torch
from tqdm import tqdm

from ..diffusion.base import DiffusionBackend
from ..diffusion.toy import CONFIG_FILE, WEIGHTS_FILE, new_toy, toy_state_dict, write_config, write_weights
from ..errors import ConfigError
from ..io import atomic_path, torch_load, torch_save, write_json

log = logging.getLogger(__name__)

# The trainer's knobs config/config.yaml does not set (optional in config/schema.yaml, toy_prior).
# Every other key's default is the toy_prior section of config/config.yaml, read by the one loader.
OPTIONAL_PRIOR_CFG = {
    "min_snr_gamma": 0.0,
    "weight_decay": 1e-2,
    "log_every": 50,
}
RESUME_FILE = "resume_state.pt"
RESUME_EVERY_S = 300.0
SAMPLE_CLASSES = ("mug", "snowman", "house")
SAMPLE_COLOURS = ("red", "green", "blue", "yellow")
SAMPLE_VIEWS = ("front", "back")


def default_prior_cfg() -> dict:
    """The toy_prior section of config/config.yaml (through db3d.config.load_config) and the optional knobs."""
    return copy.deepcopy(_default_prior_cfg())


@functools.lru_cache(maxsize=1)
def _default_prior_cfg() -> dict:
    from ..config import load_config

    return {**OPTIONAL_PRIOR_CFG, **load_config()["toy_prior"]}


def resolve_prior_cfg(prior_cfg: dict | None) -> dict:
    """`prior_cfg` over `default_prior_cfg()`, checked (one-line ConfigError on a bad value)."""
    defaults = default_prior_cfg()
    cfg = {**defaults, **(prior_cfg or {})}
    unknown = sorted(set(cfg) - set(defaults))
    if unknown:
        raise ConfigError(f"prior config: unknown keys {unknown}; known: {', '.join(defaults)}")
    for k in ("num_images", "steps", "batch_size", "sample_steps", "log_every"):
        if int(cfg[k]) < 1:
            raise ConfigError(f"prior config: {k} must be >= 1, got {cfg[k]!r}")
    if int(cfg["resolution"]) != 32:
        raise ConfigError(f"prior config: resolution must be 32 (the toy UNet's size), got {cfg['resolution']!r}")
    if not 0.0 <= float(cfg["caption_dropout"]) < 1.0:
        raise ConfigError(f"prior config: caption_dropout must be in [0, 1), got {cfg['caption_dropout']!r}")
    if not 0.0 <= float(cfg["ema_decay"]) < 1.0:
        raise ConfigError(f"prior config: ema_decay must be in [0, 1), got {cfg['ema_decay']!r}")
    return cfg


def _generator(seed: int, step: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(step) * 7 + stream) % 2**63)


def _indices(n: int, seed: int, start: int, count: int) -> list[int]:
    """Items `start .. start+count-1` of an endless sequence of shuffled epochs over range(n)."""
    out, perms = [], {}
    for pos in range(start, start + count):
        epoch, k = divmod(pos, n)
        if epoch not in perms:
            g = torch.Generator().manual_seed((int(seed) * 7_919 + 104_729 + epoch) % 2**63)
            perms[epoch] = torch.randperm(n, generator=g)
        out.append(int(perms[epoch][k]))
    return out


def lr_at(step: int, cfg: dict) -> float:
    """Learning rate of optimisation step `step` (1-based): linear warm-up, then cosine to 0."""
    steps, base = int(cfg["steps"]), float(cfg["learning_rate"])
    warm = max(1, min(int(cfg["warmup_steps"]), steps // 10))
    if step <= warm:
        return base * step / warm
    progress = (step - warm) / max(1, steps - warm)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


class PriorTrainer:
    """`train_prior`'s set-up and one step of its loop (shared with tests and the benchmark).

    Holds the dataset, the backend with its UNet and text encoder made trainable, AdamW and the EMA
    weights. `train_step(step)` is optimisation step `step` (1-based) and returns its mean loss;
    `state_dict()` / `load_state_dict()` carry everything a resumed run needs.
    """

    def __init__(self, cfg: dict, images: torch.Tensor, captions: Sequence[str], device: str | torch.device = "cpu",
                 backend: DiffusionBackend | None = None):
        self.cfg = resolve_prior_cfg(cfg)
        if images.ndim != 4 or images.shape[0] != len(captions) or images.shape[0] == 0:
            raise ValueError(f"{tuple(images.shape)} images for {len(captions)} captions")
        self.images = images.float().cpu()
        self.captions = list(captions)
        self.backend = backend if backend is not None else new_toy(device, torch.float32, seed=int(self.cfg["seed"]))
        self.backend.requires_grad_(False)
        self.modules = {"unet": self.backend.unet, "text_encoder": self.backend.text_encoder}
        self.named = {f"{m}.{n}": p for m, mod in self.modules.items() for n, p in mod.named_parameters()}
        for p in self.named.values():
            p.requires_grad_(True)
        self.params = list(self.named.values())
        decay = [p for n, p in self.named.items() if p.ndim >= 2]
        no_decay = [p for n, p in self.named.items() if p.ndim < 2]  # biases and norms: no weight decay
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": float(self.cfg["weight_decay"])},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=float(self.cfg["learning_rate"]), betas=(0.9, 0.999), eps=1e-8)
        self.ema = {n: p.detach().clone().float() for n, p in self.named.items()}

    def train_step(self, step: int) -> float:
        cfg = self.cfg
        bs, seed = int(cfg["batch_size"]), int(cfg["seed"])
        idx = _indices(len(self.captions), seed, (step - 1) * bs, bs)
        drop = torch.rand(bs, generator=_generator(seed, step, 1)) < float(cfg["caption_dropout"])
        prompts = ["" if d else self.captions[i] for i, d in zip(idx, drop.tolist())]
        images = self.images[idx].to(self.backend.device)
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        mse, weight = self._losses(images, prompts, _generator(seed, step, 0))
        loss = (mse * weight).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self._update_ema(step)
        return float(mse.detach().mean())

    def _losses(self, images: torch.Tensor, prompts: list[str], g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample MSE [B] against the model's target (epsilon, or v for the toy model's
        v-prediction) exactly as `DiffusionBackend.training_loss` draws it (same noise, same t from
        `g`), and its Min-SNR-gamma weight (Hang et al. 2023; all ones when `min_snr_gamma` is 0:
        min(SNR_t, gamma) / SNR_t for epsilon, / (SNR_t + 1) for v): it caps the weight of the
        nearly clean timesteps, whose gradients otherwise dominate learning the global structure."""
        b = self.backend
        x0 = b.encode_images(images)
        noise = b._randn(x0.shape, g)
        t = b._randint(0, b.num_train_timesteps, x0.shape[0], g)
        pred = b._unet(b.add_noise(x0, noise, t), t, b.encode_text(prompts))
        ab = b.alphas_cumprod[t].float()
        v_pred = b.prediction_type == "v_prediction"
        if v_pred:
            target = ab.sqrt().view(-1, 1, 1, 1) * noise - (1.0 - ab).sqrt().view(-1, 1, 1, 1) * x0
        else:
            target = noise
        mse = ((pred - target) ** 2).mean(dim=(1, 2, 3))
        gamma = float(self.cfg["min_snr_gamma"])
        if gamma <= 0:
            return mse, torch.ones_like(mse)
        snr = ab / (1.0 - ab)
        return mse, snr.clamp(max=gamma) / (snr + 1.0 if v_pred else snr)

    @torch.no_grad()
    def _update_ema(self, step: int) -> None:
        decay = min(float(self.cfg["ema_decay"]), (1.0 + step) / (10.0 + step))
        names = list(self.named)
        torch._foreach_lerp_([self.ema[n] for n in names], [self.named[n].detach().float() for n in names],
                             1.0 - decay)

    def ema_state_dict(self) -> dict[str, torch.Tensor]:
        """The checkpoint's weights: the backend's state dict with EMA parameters."""
        state = toy_state_dict(self.backend)
        state.update({k: v.detach().cpu() for k, v in self.ema.items()})
        return state

    @torch.no_grad()
    def use_ema(self) -> None:
        """Copy the EMA weights into the backend and freeze it (for sampling)."""
        for n, p in self.named.items():
            p.copy_(self.ema[n])
        self.backend.requires_grad_(False)

    def state_dict(self) -> dict:
        return {"weights": {n: p.detach().cpu().clone() for n, p in self.named.items()},
                "ema": {n: v.cpu().clone() for n, v in self.ema.items()},
                "optimizer": self.optimizer.state_dict()}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        if set(state["weights"]) != set(self.named) or set(state["ema"]) != set(self.named):
            raise ValueError("resume state does not match the toy model being trained")
        for n, p in self.named.items():
            p.copy_(state["weights"][n])
            self.ema[n].copy_(state["ema"][n])
        # a deep copy: Optimizer.load_state_dict keeps the given tensors, which would tie two
        # trainers of one process together through a shared state dict
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))


def render_dataset(cfg: dict, camera_cfg: dict) -> tuple[torch.Tensor, list[str]]:
    from .world import prior_dataset

    images, captions = prior_dataset(int(cfg["num_images"]), int(cfg["resolution"]), int(cfg["seed"]), camera_cfg)
    return torch.as_tensor(images).float(), list(captions)


def sample_prompts(classes: Sequence[str] = SAMPLE_CLASSES, colours: Sequence[str] = SAMPLE_COLOURS,
                   views: Sequence[str] = SAMPLE_VIEWS) -> list[list[str]]:
    """The grid's prompts, row-major: rows = classes, columns = colour-major x view."""
    return [[f"a {c} {k}, {v} view" for c in colours for v in views] for k in classes]


@torch.no_grad()
def sample_grid(backend: DiffusionBackend, cfg: dict, classes: Sequence[str] = SAMPLE_CLASSES,
                colours: Sequence[str] = SAMPLE_COLOURS, views: Sequence[str] = SAMPLE_VIEWS, scale: int = 3):
    """A labelled PIL image of samples (rows = classes, columns = colours x views), fixed noise."""
    from PIL import Image, ImageDraw

    rows = sample_prompts(classes, colours, views)
    flat = [p for row in rows for p in row]
    g = torch.Generator().manual_seed(int(cfg["seed"]) + 12345)
    imgs = backend.sample(flat, num_steps=int(cfg["sample_steps"]), guidance_scale=float(cfg["guidance_scale"]),
                          generator=g).cpu()
    s = backend.image_size * scale
    pad, left, top = 4, 64, 30
    ncol = len(colours) * len(views)
    grid = Image.new("RGB", (left + ncol * (s + pad), top + len(rows) * (s + pad)), "white")
    draw = ImageDraw.Draw(grid)
    for j, (c, v) in enumerate((c, v) for c in colours for v in views):
        x = left + j * (s + pad)
        draw.text((x + 2, 2), c, fill="black")
        draw.text((x + 2, 15), f"{v} view", fill="black")
    for i, k in enumerate(classes):
        draw.text((4, top + i * (s + pad) + s // 2 - 5), k, fill="black")
        for j in range(ncol):
            arr = (imgs[i * ncol + j].clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype("uint8")
            tile = Image.fromarray(arr).resize((s, s), Image.NEAREST)
            grid.paste(tile, (left + j * (s + pad), top + i * (s + pad)))
    return grid


def _grid_labels() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Classes and colours for the grid: the world's own lists when it exports them."""
    try:
        from . import world
    except ImportError:  # pragma: no cover
        return SAMPLE_CLASSES, SAMPLE_COLOURS
    classes = tuple(getattr(world, "CLASSES", SAMPLE_CLASSES))
    colours = tuple(getattr(world, "COLOURS", getattr(world, "COLORS", SAMPLE_COLOURS)))
    classes = tuple(classes.keys()) if isinstance(classes, dict) else classes
    colours = tuple(colours.keys()) if isinstance(colours, dict) else colours
    return classes[:3] or SAMPLE_CLASSES, colours[:4] or SAMPLE_COLOURS


def train_prior_from_config(cfg: dict, out_dir: str | Path) -> dict:
    """`python -m db3d toy-prior`: `train_prior` with the config's `toy_prior` section, camera
    ranges and device (`device`: auto = CUDA when present)."""
    from ..diffusion.loading import resolve_device

    return train_prior(cfg["toy_prior"], cfg["nerf"]["camera"], out_dir, device=resolve_device(cfg["device"]))


def train_prior(prior_cfg: dict, camera_cfg: dict, out_dir: str | Path, *, progress: bool = True,
                device: str | torch.device = "cpu", resume_every_s: float = RESUME_EVERY_S,
                dataset: tuple[torch.Tensor, Sequence[str]] | None = None) -> dict:
    """Train the toy prior and write model.safetensors, config.json, samples.png, train_log.json
    into `out_dir` (see the module docstring). Returns the train log. `dataset` (images, captions)
    replaces the rendered one (tests)."""
    from ..diffusion.toy import architecture

    cfg = resolve_prior_cfg(prior_cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    if dataset is None:
        images, captions = render_dataset(cfg, camera_cfg)
        source = "db3d.synth.world.prior_dataset"
    else:
        images, captions = torch.as_tensor(dataset[0]).float(), list(dataset[1])
        source = "given"
    t_data = time.monotonic() - t0
    trainer = PriorTrainer(cfg, images, captions, device=device)
    n_params = sum(p.numel() for p in trainer.params)
    log.info("toy prior: %d images (%s, %.1f s), %d parameters, %d threads", len(captions), source, t_data,
             n_params, torch.get_num_threads())
    fingerprint = {"prior_cfg": cfg, "camera_cfg": camera_cfg, "architecture": architecture(),
                   "n_images": len(captions), "source": source}

    resume_path = out_dir / RESUME_FILE
    start, losses, earlier_s = 0, [], 0.0
    if resume_path.exists():
        try:
            state = torch_load(resume_path)
        except Exception as exc:  # a state from a killed write is never there (atomic), but be safe
            log.warning("cannot read resume state %s (%s); starting over", resume_path, exc)
            state = None
        if state is not None and state.get("fingerprint") == fingerprint:
            trainer.load_state_dict(state)
            start, losses, earlier_s = int(state["step"]), list(state["losses"]), float(state["train_s"])
            log.info("resuming toy prior training from step %d (%s)", start, resume_path)
        elif state is not None:
            log.warning("resume state %s is for other settings; starting over", resume_path)

    steps = int(cfg["steps"])
    bar = tqdm(total=steps, initial=start, desc="toy prior", file=sys.stderr, disable=not progress,
               mininterval=5.0)
    t_train = time.monotonic()
    last_save = t_train
    for step in range(start + 1, steps + 1):
        losses.append(trainer.train_step(step))
        bar.update(1)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}", refresh=False)
        if step < steps and time.monotonic() - last_save >= resume_every_s:
            last_save = time.monotonic()
            torch_save({"fingerprint": fingerprint, "step": step, "losses": losses,
                        "train_s": earlier_s + last_save - t_train, **trainer.state_dict()}, resume_path)
    bar.close()
    trained_s = earlier_s + time.monotonic() - t_train

    every = int(cfg["log_every"])
    curve = [[s, sum(losses[max(0, s - every):s]) / len(losses[max(0, s - every):s])]
             for s in range(every, steps + 1, every)]
    if not curve or curve[-1][0] != steps:
        curve.append([steps, sum(losses[-every:]) / len(losses[-every:])])
    tail = losses[-min(len(losses), 100):]
    final_loss = sum(tail) / len(tail)

    t_s = time.monotonic()
    trainer.use_ema()
    grid = sample_grid(trainer.backend, cfg, *_grid_labels())
    t_sample = time.monotonic() - t_s
    meta = {"prior_cfg": cfg, "camera_cfg": camera_cfg, "steps": steps, "final_loss": final_loss,
            "num_images": len(captions), "dataset": source}
    train_log = {"steps": steps, "batch_size": int(cfg["batch_size"]), "num_images": len(captions),
                 "device": str(trainer.backend.device), "threads": torch.get_num_threads(),
                 "loss_curve": curve, "final_loss": final_loss, "prior_cfg": cfg, "camera_cfg": camera_cfg,
                 "parameters": trainer.backend.parameter_counts(), "dataset_s": t_data, "train_s": trained_s,
                 "sample_s": t_sample, "resumed_from_step": start, "torch": torch.__version__}
    with atomic_path(out_dir / WEIGHTS_FILE) as tmp:  # renamed last: its presence means all is there
        sha = write_weights(trainer.backend, tmp, meta, trainer.ema_state_dict())
        write_config(out_dir, meta, sha)
        with atomic_path(out_dir / "samples.png") as tmp_png:
            grid.save(tmp_png)
        train_log["sha256"] = sha
        train_log["wall_time_s"] = time.monotonic() - t0 + earlier_s  # earlier_s: killed runs' training
        write_json(out_dir / "train_log.json", train_log)
    if resume_path.exists():
        resume_path.unlink()
    log.info("toy prior: %d steps in %.0f s, final loss %.4f, %s", steps, trained_s, final_loss, out_dir / WEIGHTS_FILE)
    return train_log


__all__ = ["OPTIONAL_PRIOR_CFG", "default_prior_cfg", "PriorTrainer", "lr_at", "resolve_prior_cfg", "sample_grid",
           "sample_prompts", "train_prior", "train_prior_from_config", "CONFIG_FILE", "WEIGHTS_FILE"]
