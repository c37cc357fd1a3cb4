"""The timed work, written with the library calls the stages make, in the order they make them.

Each class sets up what its stage sets up (outside the timing) and exposes the unit of work the
stage repeats:
- `NerfRun.step(step)`: one iteration of the loop of `db3d.stages.fit_nerf` (stage1, or stage3 with
  its reconstruction render), and `resume_state()`: the dict it saves every `RESUME_EVERY` steps;
- `DreamBoothRun.step(step)`: one iteration of the loop of `db3d.dreambooth.train`, and
  `resume_state()`: the dict it saves every `resume_every` steps;
- `DiffusersDreamBooth.step()`: the core of diffusers' examples/dreambooth/train_dreambooth.py step
  (with prior preservation) on the same modules and batch: the reference point;
- `Img2ImgRun.run()`: `db3d.stages.pseudo_views` after loading the NeRF; `class_prior_batch`: one
  batch of `db3d.stages.class_priors`; `EvalRun.run()`: `db3d.eval.evaluate` after loading its models.

Until the loop bodies are factored out of stages.py / dreambooth.py (docs/performance.md), the
bodies here are copies; tests/test_bench.py checks that they compute exactly what the stages do
(identical loss records from the same seed).
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
    """`fit_nerf`'s set-up (field, optimiser, SDS, text embeddings, estimator) and one loop iteration.

    `occgrid`: `on` = as fit_nerf (nerfacc occupancy grid on CUDA when its ops load), `off` = no
    estimator (nerfacc marching without skipping on CUDA), `dense` = the plain-PyTorch sampler.
    `pseudo_views` (stage3): the dict `pseudo_views` writes; default random images at orbit cameras.
    """

    def __init__(self, cfg: dict, backend, *, stage: str = "stage1", res: int | None = None,
                 occgrid: str = "on", prompt: str = PROMPT, pseudo_views: dict | None = None):
        from ..guidance import ScoreDistillation
        from ..nerf import build_field, orbit_cameras
        from ..nerf.render import make_estimator, nerfacc_cuda_available
        from ..stages import _generator

        if stage not in ("stage1", "stage3", "naive"):
            raise ValueError(f"NerfRun: stage {stage!r} (latent_nerf is not benchmarked)")
        seed_everything(cfg["seed"], deterministic=False)  # seeds; the caller owns the kernel choice
        self.cfg, self.backend, self.stage = cfg, backend, stage
        device = self.device = backend.device
        self.field, self.background = build_field(cfg["nerf"], out_channels=3)
        self.field, self.background = self.field.to(device), self.background.to(device)
        params = list(self.field.parameters()) + list(self.background.parameters())
        self.optimizer = torch.optim.Adam(params, lr=cfg["sds"]["learning_rate"], betas=(0.9, 0.99), eps=1e-15)
        self.sds = ScoreDistillation(backend, cfg["sds"], cfg[stage]["iters"])
        self.res = int(res if res is not None else cfg["nerf"]["render_resolution"])
        with torch.no_grad():
            self.uncond = backend.encode_text([""])
            self.cond = {d: backend.encode_text([backend.view_prompt(prompt, d)])
                         for d in ("front", "side", "back", "overhead")}
        self.recon_weight = cfg["stage3"]["recon_weight"] if stage == "stage3" else 0.0
        if self.recon_weight > 0:
            if pseudo_views is None:
                s2 = cfg["stage2"]
                fov = sum(cfg["nerf"]["camera"]["fov_deg"]) / 2
                cams = orbit_cameras(s2["num_views"], s2["radius"], s2["elevation_deg"], fov)
                g = torch.Generator().manual_seed(7)
                images = torch.rand(s2["num_views"], 3, backend.image_size, backend.image_size, generator=g)
                pseudo_views = {"cameras": cams, "images": images}
            self.view_cams = pseudo_views["cameras"].to(device)
            self.view_targets = F.interpolate(pseudo_views["images"].float(), size=self.res, mode="bilinear",
                                              antialias=True, align_corners=False).to(device)
        self.estimator = None
        if occgrid == "on" and device.type == "cuda" and nerfacc_cuda_available():
            self.estimator = make_estimator(cfg["nerf"]["bound"], device=device)
        self.render_kw = {"sampler": "torch"} if occgrid == "dense" else {}
        self.reg = cfg["nerf"]["regularisers"]
        self.generator = _generator(cfg["seed"])
        self.records: list[dict] = []
        self.samples = 0
        self.sampler = ""

    def warm_estimator(self, warmup_steps: int = 256, n: int = 16) -> None:
        """Bring the occupancy grid to its post-warm-up state (the updates fit_nerf's first 256 steps
        make), so timed steps at STEADY_STATE_STEP see a grid that skips empty space."""
        from ..nerf.render import update_estimator

        if self.estimator is None:
            return
        for s in range(0, warmup_steps, n):
            update_estimator(self.estimator, self.field, s, num_samples=self.cfg["nerf"]["num_samples"])

    def step(self, step: int) -> dict:
        """One iteration of fit_nerf's loop (same calls, same order; resume saves are `resume_state`)."""
        from ..nerf import render, sample_cameras, view_direction
        from ..nerf.render import update_estimator
        from ..stages import _scalar, _shading

        cfg, reg, device = self.cfg, self.reg, self.device
        latent = False
        res = self.res
        if self.estimator is not None:
            update_estimator(self.estimator, self.field, step, num_samples=cfg["nerf"]["num_samples"])
        cams = sample_cameras(1, cfg["nerf"]["camera"], self.generator).to(device)
        shading = _shading(cfg, self.generator, latent)
        out = render(self.field, self.background, cams, res, res, shading=shading,
                     ambient=cfg["nerf"]["shading"]["ambient"], num_samples=cfg["nerf"]["num_samples"],
                     estimator=self.estimator, generator=self.generator,
                     normals=shading != "albedo" or reg["orientation"] > 0, **self.render_kw)
        direction = view_direction(float(cams.azimuth_deg[0]), float(cams.elevation_deg[0]))
        loss_sds, info = self.sds(out.image, self.cond[direction], self.uncond, step, generator=None, latent=latent)
        loss = loss_sds + sum(reg[k] * out.losses[k] for k in ("orientation", "opacity", "distortion")
                              if reg[k] > 0 and k in out.losses)
        record = {"step": step, "sds": loss_sds.item(), "t": _scalar(info.get("t")),
                  "direction": direction, "shading": shading}
        if self.recon_weight > 0:
            i = int(torch.randint(len(self.view_cams), (1,), generator=self.generator))
            view = render(self.field, self.background, self.view_cams[i:i + 1], res, res, shading="albedo",
                          ambient=cfg["nerf"]["shading"]["ambient"], num_samples=cfg["nerf"]["num_samples"],
                          estimator=self.estimator, generator=self.generator, normals=False, **self.render_kw)
            loss_recon = F.mse_loss(view.image, self.view_targets[i:i + 1])
            loss = loss + self.recon_weight * loss_recon
            record["recon"] = loss_recon.item()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        record["loss"] = loss.item()
        self.records.append(record)
        self.samples += int(out.info.get("samples", 0))
        self.sampler = str(out.info.get("sampler", ""))
        return record

    def resume_state(self, step: int, elapsed: float = 0.0) -> dict:
        """What fit_nerf writes to `.resume.pt` every RESUME_EVERY steps."""
        return {"field": self.field.state_dict(), "background": self.background.state_dict(),
                "optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state(),
                "estimator": self.estimator.state_dict() if self.estimator is not None else None,
                "torch_rng": torch.get_rng_state(), "step": step + 1, "records": self.records,
                "elapsed": elapsed}


# ---- DreamBooth ------------------------------------------------------------------------------------

def random_images(n: int, size: int, seed: int) -> torch.Tensor:
    """n images [n,3,size,size] in [0,1] on CPU (where the stages keep photos and class priors)."""
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


class DreamBoothRun:
    """`dreambooth.train`'s set-up (trainable parameters, AdamW, grad scaler) and one loop iteration.

    Inputs default to 4 random instance photos and 8 random class images at the model's size, on CPU
    as `stages.dreambooth` holds them.
    """

    def __init__(self, cfg: dict, backend, *, lora_rank: int, train_text_encoder: bool,
                 instance_images: torch.Tensor | None = None, instance_prompts: list[str] | None = None,
                 class_images: torch.Tensor | None = None, class_prompt: str = CLASS_PROMPT,
                 seed: int | None = None, max_grad_norm: float = 1.0):
        db = cfg["dreambooth"]
        S = backend.image_size
        self.backend = backend
        self.instance_images = instance_images if instance_images is not None else random_images(4, S, 11)
        self.class_images = class_images if class_images is not None else random_images(8, S, 12)
        n_inst = int(self.instance_images.shape[0])
        self.prompts = list(instance_prompts) if instance_prompts is not None else [INSTANCE_PROMPT] * n_inst
        self.class_prompt = class_prompt
        self.batch_size = int(db["batch_size"])
        self.prior_loss_weight = float(db["prior_loss_weight"])
        self.seed = int(cfg["seed"] if seed is None else seed)
        self.max_grad_norm = float(max_grad_norm)
        self.use_prior = (self.class_images is not None and self.class_images.shape[0] > 0
                          and self.prior_loss_weight > 0)
        self.n_inst, self.n_cls = n_inst, int(self.class_images.shape[0]) if self.use_prior else 0
        self.params = backend.trainable_parameters(train_text_encoder=train_text_encoder, lora_rank=lora_rank)
        self.optimizer = torch.optim.AdamW(self.params, lr=db["learning_rate"], betas=(0.9, 0.999),
                                           weight_decay=1e-2, eps=1e-8)
        fp16 = backend.device.type == "cuda" and backend.dtype == torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=fp16)
        self.records: list[dict] = []

    @property
    def trained_parameters(self) -> int:
        return sum(p.numel() for p in self.params)

    def step(self, step: int) -> dict:
        """One iteration of dreambooth.train's loop (checkpoint/resume writes are timed separately)."""
        from ..dreambooth import _indices, _step_generator

        backend, seed, batch_size = self.backend, self.seed, self.batch_size
        g = _step_generator(seed, step)
        inst = _indices(self.n_inst, seed, 0, (step - 1) * batch_size, batch_size)
        images = self.instance_images[inst]
        batch_prompts = [self.prompts[i] for i in inst]
        if self.use_prior:
            cls = _indices(self.n_cls, seed, 1, (step - 1) * batch_size, batch_size)
            images = torch.cat([images.to(self.class_images.dtype), self.class_images[cls]])
            batch_prompts += [self.class_prompt] * batch_size
        losses = backend.training_loss(images, batch_prompts, generator=g)
        loss_inst = losses[:batch_size].mean()
        loss_prior = losses[batch_size:].mean() if self.use_prior else torch.zeros((), device=losses.device)
        loss = loss_inst + self.prior_loss_weight * loss_prior
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        if self.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        vals = torch.stack([loss.detach(), loss_inst.detach(), loss_prior.detach()]).float().tolist()
        record = {"step": step, "loss": vals[0], "loss_instance": vals[1], "loss_prior": vals[2]}
        self.records.append(record)
        return record

    def resume_state(self, step: int) -> dict:
        """What dreambooth.train writes every `resume_every` steps (built here, as there, at save time)."""
        return {"fingerprint": {"bench": True}, "step": step, "records": self.records,
                "weights": {k: v.cpu() for k, v in self.backend.finetuned_state_dict().items()},
                "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                "rng": torch.get_rng_state()}

    def close(self) -> None:
        """As train() ends: back to inference (trained weights to the compute dtype, no grads)."""
        self.optimizer.zero_grad(set_to_none=True)
        self.optimizer = None
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
    """`stages.pseudo_views` after `load_nerf`: render the orbit, img2img every view, save the result."""

    def __init__(self, cfg: dict, backend, out_dir: Path, prompt: str = PROMPT):
        from ..nerf import build_field

        self.cfg, self.backend, self.out_dir, self.prompt = cfg, backend, Path(out_dir), prompt
        seed_everything(cfg["seed"], deterministic=False)
        field, background = build_field(cfg["nerf"], out_channels=3)
        self.field, self.background = field.to(backend.device), background.to(backend.device)

    def run(self, num_steps: int | None = None, num_views: int | None = None) -> torch.Tensor:
        from ..io import atomic_path
        from ..nerf import orbit_cameras, render, view_direction
        from ..stages import _generator, image_grid

        cfg, backend = self.cfg, self.backend
        s2 = cfg["stage2"]
        fov = sum(cfg["nerf"]["camera"]["fov_deg"]) / 2
        n = int(num_views or s2["num_views"])
        steps = int(num_steps or s2["sample_steps"])
        cams = orbit_cameras(n, s2["radius"], s2["elevation_deg"], fov).to(backend.device)
        res = cfg["nerf"]["render_resolution"]
        with torch.no_grad():
            renders = render(self.field, self.background, cams, res, res, shading="albedo", ambient=1.0,
                             num_samples=cfg["nerf"]["num_samples"], train=False, normals=False).image.clamp(0, 1)
        directions = [view_direction(float(a), float(e)) for a, e in zip(cams.azimuth_deg, cams.elevation_deg)]
        prompts = [backend.view_prompt(self.prompt, d) for d in directions]
        generator = _generator(cfg["seed"], backend.device)
        images = []
        for i in range(0, len(prompts), s2["batch_size"]):
            chunk = slice(i, i + s2["batch_size"])
            images.append(backend.sample(prompts[chunk], steps, s2["guidance_scale"], generator,
                                         init_images=renders[chunk], strength=s2["noise_level"]).float().cpu())
        images = torch.cat(images)
        renders_up = F.interpolate(renders.float().cpu(), size=images.shape[-1], mode="nearest")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.out_dir / "pseudo_views.pt") as tmp:
            torch.save({"images": images, "renders": renders.cpu(), "cameras": cams.to("cpu"),
                        "directions": directions, "prompts": prompts, "noise_level": s2["noise_level"]}, tmp)
        save_image(self.out_dir / "pseudo_views.png", image_grid([renders_up, images]))
        return images


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

