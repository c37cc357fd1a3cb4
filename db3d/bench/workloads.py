"""The timed work: the stages' own code, set up as the stages set it up (outside the timing).

- `NerfRun.step(step)`: one `db3d.stages.NerfFit.iteration` (an iteration of `fit_nerf`'s loop,
  stage1 or stage3 with its reconstruction render), and `resume_state()`: what `fit_nerf` saves
  every `RESUME_EVERY` steps (`NerfFit.resume_state`);
- `DreamBoothRun.step(step)`: one `db3d.dreambooth.DreamBoothTrainer.train_step` (an iteration of
  `train`'s loop), and `resume_state()`: what `train` saves (`DreamBoothTrainer.resume_state`);
- `DiffusersDreamBooth.step()`: the core of diffusers' examples/dreambooth/train_dreambooth.py step
  (with prior preservation) on the same modules and batch: the reference point;
- `Img2ImgRun.run()`: `db3d.stages.pseudo_views` after loading the NeRF (`img2img_views` +
  `save_pseudo_views`); `class_prior_batch`: one batch of `db3d.stages.class_priors`;
  `EvalRun.run()`: `db3d.eval.evaluate` after loading its models.

The wrappers here only pick the inputs (random photos, class images, pseudo views) and count what
the table reports; tests/test_bench.py checks that they call the stages' objects.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..io import save_image, seed_everything

PROMPT = "a sks dog sitting on a beach"   # the subject prompt the SDS/img2img rows use
INSTANCE_PROMPT = "a sks dog"
CLASS_PROMPT = "a dog"
STEADY_STATE_STEP = 1000  # SDS rows start here: past the occupancy grid's 256 warm-up steps


# ---- fit_nerf --------------------------------------------------------------------------------------

class NerfRun:
    """`fit_nerf`'s set-up (a `stages.NerfFit`) and one iteration of its loop (`NerfFit.iteration`).

    `occgrid`: `on` = as fit_nerf (nerfacc occupancy grid on CUDA when its ops load), `off` = no
    estimator (nerfacc marching without skipping on CUDA), `dense` = the plain-PyTorch sampler.
    `pseudo_views` (stage3): the dict `pseudo_views` writes; default random images at orbit cameras.
    """

    def __init__(self, cfg: dict, backend, *, stage: str = "stage1", res: int | None = None,
                 occgrid: str = "on", prompt: str = PROMPT, pseudo_views: dict | None = None):
        from ..nerf import orbit_cameras
        from ..stages import NerfFit

        if stage not in ("stage1", "stage3", "naive"):
            raise ValueError(f"NerfRun: stage {stage!r} (latent_nerf is not benchmarked)")
        seed_everything(cfg["seed"], deterministic=False)  # seeds; the caller owns the kernel choice
        if stage == "stage3" and pseudo_views is None:
            s2 = cfg["stage2"]
            fov = sum(cfg["nerf"]["camera"]["fov_deg"]) / 2
            cams = orbit_cameras(s2["num_views"], s2["radius"], s2["elevation_deg"], fov)
            images = random_images(s2["num_views"], backend.image_size, 7)
            pseudo_views = {"cameras": cams, "images": images}
        self.fit = NerfFit(cfg, stage, backend, prompt, pseudo_views=pseudo_views, res=res,
                           use_estimator=occgrid == "on", sampler="torch" if occgrid == "dense" else "auto")
        self.cfg = cfg
        self.records: list[dict] = []
        self.samples = 0
        self.sampler = ""

    @property
    def estimator(self):
        return self.fit.estimator

    @property
    def sds(self):
        return self.fit.sds

    def warm_estimator(self, warmup_steps: int = 256, n: int = 16) -> None:
        """Bring the occupancy grid to its post-warm-up state (the updates fit_nerf's first 256 steps
        make), so timed steps at STEADY_STATE_STEP see a grid that skips empty space."""
        from ..nerf.render import update_estimator

        if self.fit.estimator is None:
            return
        for s in range(0, warmup_steps, n):
            update_estimator(self.fit.estimator, self.fit.field, s, num_samples=self.cfg["nerf"]["num_samples"])

    def step(self, step: int) -> dict:
        """One iteration of fit_nerf's loop (resume saves are `resume_state`)."""
        _, record = self.fit.iteration(step)
        self.records.append(record)
        self.samples += int(self.fit.last_info.get("samples", 0))
        self.sampler = str(self.fit.last_info.get("sampler", ""))
        return record

    def resume_state(self, step: int, elapsed: float = 0.0) -> dict:
        """What fit_nerf writes to `.resume.pt` after step `step` (every RESUME_EVERY steps)."""
        return self.fit.resume_state(step + 1, self.records, elapsed)


# ---- DreamBooth ------------------------------------------------------------------------------------

def random_images(n: int, size: int, seed: int) -> torch.Tensor:
    """n images [n,3,size,size] in [0,1] on CPU (where the stages keep photos and class priors)."""
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


class DreamBoothRun:
    """`dreambooth.train`'s set-up (a `DreamBoothTrainer`) and one iteration of its loop (`train_step`).

    Inputs default to 4 random instance photos and 8 random class images at the model's size, on CPU
    as `stages.dreambooth` holds them.
    """

    def __init__(self, cfg: dict, backend, *, lora_rank: int, train_text_encoder: bool,
                 instance_images: torch.Tensor | None = None, instance_prompts: list[str] | None = None,
                 class_images: torch.Tensor | None = None, class_prompt: str = CLASS_PROMPT,
                 seed: int | None = None, max_grad_norm: float = 1.0):
        from ..dreambooth import DreamBoothTrainer

        db = cfg["dreambooth"]
        S = backend.image_size
        self.backend = backend
        instance_images = instance_images if instance_images is not None else random_images(4, S, 11)
        class_images = class_images if class_images is not None else random_images(8, S, 12)
        prompts = list(instance_prompts) if instance_prompts is not None else INSTANCE_PROMPT
        self.trainer = DreamBoothTrainer(backend, instance_images, prompts, class_images, class_prompt,
                                         lr=db["learning_rate"], batch_size=int(db["batch_size"]),
                                         prior_loss_weight=float(db["prior_loss_weight"]),
                                         train_text_encoder=train_text_encoder, lora_rank=lora_rank,
                                         seed=int(cfg["seed"] if seed is None else seed),
                                         max_grad_norm=float(max_grad_norm))
        self.records: list[dict] = []

    @property
    def trained_parameters(self) -> int:
        return sum(p.numel() for p in self.trainer.params)

    def step(self, step: int) -> dict:
        """One iteration of dreambooth.train's loop (checkpoint/resume writes are timed separately)."""
        record = self.trainer.train_step(step)
        self.records.append(record)
        return record

    def resume_state(self, step: int) -> dict:
        """What dreambooth.train writes every `resume_every` steps (built here, as there, at save time)."""
        return self.trainer.resume_state({"bench": True}, step, self.records)

    def close(self) -> None:
        """As train() ends: back to inference (trained weights to the compute dtype, no grads)."""
        self.trainer.optimizer.zero_grad(set_to_none=True)
        self.trainer.optimizer = None
        self.backend.freeze()


class DiffusersDreamBooth:
    """The reference: the core of diffusers' examples/dreambooth/train_dreambooth.py training step.

    Same modules (`backend.unet`, `.vae`, `.text_encoder`), same trained parameters, same batch
    (`batch_size` instance + `batch_size` class images, concatenated as its collate_fn does), AdamW
    and a GradScaler as accelerate uses for fp16. As in the script: the prompts are tokenised once
    by the dataset, the VAE encodes the pixels in the weight dtype and samples the posterior, noise
    and timesteps are drawn on the device, the MSEs are over the whole instance and prior halves;
    IF's text embeddings are precomputed (`--pre_compute_text_embeddings`, as diffusers recommends for
    IF), SD's text encoder runs every step (the script's default).
    """

    def __init__(self, cfg: dict, backend, *, lora_rank: int, train_text_encoder: bool,
                 precompute_text: bool | None = None):
        import logging

        from diffusers import DDPMScheduler

        db = cfg["dreambooth"]
        self.backend = backend
        bs = int(db["batch_size"])
        S = backend.image_size
        self.pixel_values = random_images(2 * bs, S, 13) * 2.0 - 1.0  # instance then class, in [-1, 1]
        self.input_ids, self.attention_mask = backend.tokenizer([INSTANCE_PROMPT] * bs + [CLASS_PROMPT] * bs)
        quiet = logging.getLogger("diffusers")
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # "config attributes ... will be ignored" (DDIM-only keys)
        try:
            self.noise_scheduler = DDPMScheduler.from_config(backend.scheduler_config)
        finally:
            quiet.setLevel(level)
        self.prior_loss_weight = float(db["prior_loss_weight"])
        self.params = backend.trainable_parameters(train_text_encoder=train_text_encoder, lora_rank=lora_rank)
        self.optimizer = torch.optim.AdamW(self.params, lr=db["learning_rate"], betas=(0.9, 0.999),
                                           weight_decay=1e-2, eps=1e-8)
        fp16 = backend.device.type == "cuda" and backend.dtype == torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=fp16)
        precompute = (backend.name == "if") if precompute_text is None else precompute_text
        self.precompute = bool(precompute and not train_text_encoder)
        self.embeds = None
        if self.precompute:
            with torch.no_grad():
                self.embeds = self._encode_prompt()

    def _encode_prompt(self) -> torch.Tensor:
        b = self.backend
        kwargs = {"attention_mask": self.attention_mask.to(b.device)} if b.text_attention_mask else {}
        return b.text_encoder(self.input_ids.to(b.device), **kwargs)[0]

    def step(self) -> torch.Tensor:
        b = self.backend
        pixel_values = self.pixel_values.to(b.device, non_blocking=True)
        with b._autocast():  # accelerate's mixed precision around the model calls
            if b.vae is not None:
                model_input = b.vae.encode(pixel_values.to(b.dtype)).latent_dist.sample()
                model_input = model_input * b.vae.config.scaling_factor
            else:
                model_input = pixel_values
            noise = torch.randn_like(model_input)
            bsz = model_input.shape[0]
            timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (bsz,),
                                      device=model_input.device).long()
            noisy_model_input = self.noise_scheduler.add_noise(model_input, noise, timesteps)
            encoder_hidden_states = self.embeds if self.embeds is not None else self._encode_prompt()
            model_pred = b.unet(noisy_model_input, timesteps, encoder_hidden_states, return_dict=False)[0]
            if model_pred.shape[1] == 6:  # IF: learned variance; train the epsilon half
                model_pred, _ = torch.chunk(model_pred, 2, dim=1)
            if self.noise_scheduler.config.prediction_type == "v_prediction":
                target = self.noise_scheduler.get_velocity(model_input, noise, timesteps)
            else:
                target = noise
            model_pred, model_pred_prior = torch.chunk(model_pred, 2, dim=0)
            target, target_prior = torch.chunk(target, 2, dim=0)
            loss = F.mse_loss(model_pred.float(), target.float(), reduction="mean")
            prior_loss = F.mse_loss(model_pred_prior.float(), target_prior.float(), reduction="mean")
            loss = loss + self.prior_loss_weight * prior_loss
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def close(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.optimizer = None
        self.backend.freeze()


# ---- stage 2, class priors, evaluation ---------------------------------------------------------------

class Img2ImgRun:
    """`stages.pseudo_views` after `load_nerf`: render the orbit, img2img every view, save the result
    (`stages.img2img_views` + `stages.save_pseudo_views`)."""

    def __init__(self, cfg: dict, backend, out_dir: Path, prompt: str = PROMPT):
        from ..nerf import build_field

        self.cfg, self.backend, self.out_dir, self.prompt = cfg, backend, Path(out_dir), prompt
        seed_everything(cfg["seed"], deterministic=False)
        field, background = build_field(cfg["nerf"], out_channels=3)
        self.field, self.background = field.to(backend.device), background.to(backend.device)

    def run(self, num_steps: int | None = None, num_views: int | None = None) -> torch.Tensor:
        from ..stages import img2img_views, save_pseudo_views

        views = img2img_views(self.cfg, self.backend, self.field, self.background, self.prompt,
                              num_views=num_views, num_steps=num_steps, progress=False)
        save_pseudo_views(self.out_dir, views)
        return views["images"]


PRIOR_BATCH = 4  # generate_class_images' default batch


def class_prior_batch(cfg: dict, backend, out_dir: Path, num_steps: int | None = None) -> torch.Tensor:
    """One batch of `stages.class_priors`: PRIOR_BATCH images at class_sample_steps, saved as PNG."""
    from ..dreambooth import generate_class_images

    steps = int(num_steps or cfg["dreambooth"]["class_sample_steps"])
    images = generate_class_images(backend, CLASS_PROMPT, PRIOR_BATCH, steps, seed=cfg["seed"],
                                   batch_size=PRIOR_BATCH, progress=False)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        save_image(out_dir / f"{i:03d}.png", img)
    return images


def _resolve_table(path: str) -> str:
    from ..config import REPO_ROOT

    p = Path(path)
    return str(p if p.exists() or p.is_absolute() else REPO_ROOT / p)


def eval_texts(cfg: dict) -> dict:
    """The evaluated prompt and the retrieval pool of the first prompt of the prompt table (as
    `evaluate` builds them); a synthetic pool of 100 prompts when the tables cannot be read."""
    from ..data.prompts import load_prompts
    from ..eval.run import prompt_texts

    ds = dict(cfg["dataset"])
    ds["prompts_table"] = _resolve_table(ds["prompts_table"])
    ds["subjects_table"] = _resolve_table(ds["subjects_table"])
    try:
        table = load_prompts(ds["prompts_table"])
        row = table.iloc[0]
        return prompt_texts(dict(cfg, dataset=ds), str(row["subject"]), str(row["prompt_id"]))
    except Exception:  # noqa: BLE001 - the cost does not depend on which prompts
        pool = [f"a photo of object number {i} on a table" for i in range(100)]
        return {"prompt": pool[0], "clip_text": pool[0], "pool": pool, "true_index": 0}


def random_clip(name: str, device: torch.device):
    """Full-size open_clip model `name` with random weights (the cost of the real one, offline)."""
    import open_clip

    from ..eval.clip import CLIP_MEAN, CLIP_STD, ClipModel, _split_entry

    import logging

    name = _split_entry(name)[0]
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # "No pretrained weights loaded ... initialized randomly": intended
    try:
        model = open_clip.create_model(name, pretrained=None, device=device, force_quick_gelu=True)
    finally:
        root.setLevel(level)
    model.eval()
    size = model.visual.image_size
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    return ClipModel(name=name, label=f"random({name})", model=model, tokenizer=open_clip.get_tokenizer(name),
                     image_size=size, random_weights=True, device=torch.device(device), mean=CLIP_MEAN, std=CLIP_STD)


class EvalRun:
    """The core of `db3d.eval.evaluate` after its models are loaded: turntable renders, every CLIP
    of `models.clip` on the views and the prompt pool (R-precision, CLIP-T), the GIF + contact
    sheet. The tiny backend uses the tiny CLIP stand-ins; sd/if full-size CLIPs with random weights.
    Not included: the metrics against the subject photos (CLIP-I, DINO-I), Janus and the mesh, which
    need the subject's photos and the DINO weights; `evaluate` logs their wall time itself
    (`eval_info.json`, `timing_s`)."""

    def __init__(self, cfg: dict, device: torch.device, out_dir: Path):
        import time

        from ..eval.clip import load_clip
        from ..nerf import build_field

        self.cfg, self.device, self.out_dir = cfg, torch.device(device), Path(out_dir)
        seed_everything(cfg["seed"], deterministic=False)
        field, background = build_field(cfg["nerf"], out_channels=3)
        self.field, self.background = field.to(self.device).eval(), background.to(self.device).eval()
        self.texts = eval_texts(cfg)
        t0 = time.perf_counter()
        tiny = cfg["backend"] == "tiny"
        self.clips = [load_clip(n, offline_tiny=True, device=self.device) if tiny else random_clip(n, self.device)
                      for n in cfg["models"]["clip"]]
        self.build_s = time.perf_counter() - t0

    def run(self) -> dict:
        from ..eval.rprecision import clip_t, r_precision
        from ..eval.turntable import render_turntable, write_turntable

        images, azimuths = render_turntable(self.cfg, self.field, self.background, {"latent": False},
                                            device=self.device)
        out = {}
        pool, true = self.texts["pool"], self.texts["true_index"]
        for clip in self.clips:
            img_emb = clip.encode_images(images)
            pool_emb = clip.encode_text(pool)
            out[clip.label] = (r_precision(img_emb, pool_emb, [true] * len(img_emb), k=1),
                               clip_t(img_emb, pool_emb[true]))
        write_turntable(self.out_dir, images, azimuths, title="bench")
        return out

