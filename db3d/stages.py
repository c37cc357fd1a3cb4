"""The stages of DreamBooth3D and its baselines, composed from the library modules.

- class priors: prior-preservation images of a class, sampled once per class and backend;
- DreamBooth: one run writes the *partial* and the *full* checkpoint; the *multi-view* run
  continues the partial model on the photos + stage-2 pseudo views with view-suffixed prompts;
- NeRF by score distillation: `stage1` (partial DreamBooth), `stage3` (multi-view DreamBooth +
  weak reconstruction loss on the pseudo views), `naive` (full DreamBooth, the paper's
  DreamBooth+Fusion), `latent_nerf` (full DreamBooth, the field renders the denoiser's latents);
- pseudo views (stage 2): renders of the initial NeRF, noised to `stage2.noise_level` and
  denoised by the full DreamBooth model, one image per view, saved with their cameras.

Variants are configurations of this one code path (declared in db3d.variants), never copies.
Every stage is seeded, writes its outputs atomically, and resumes a killed run from its last
resume state (`.resume.pt` beside the outputs).
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import record_function
from tqdm import tqdm

from . import jobperf
from .errors import ConfigError, DataError
from .io import (atomic_path, file_sha256, load_resume_state, resume_settings, save_image, seed_everything,
                 torch_load, torch_save, write_json)
from .variants import (FULL, LOSSES, MULTIVIEW_LOSSES, MULTIVIEW_MODEL, NERF, PARTIAL, PSEUDO_VIEWS,
                       PRIORS_MANIFEST, PSEUDO_VIEWS_PNG, STAGES, TURNTABLE)

log = logging.getLogger(__name__)

RESUME_EVERY = 25  # NeRF iterations between resume states
PREVIEW_ELEVATION_DEG = 15.0  # the stage turntables look slightly down on the object


# ---- helpers --------------------------------------------------------------------------------------

# What `compile_unet: true` does (DiffusionBackend.compile_models; measurements on an H200 in
# docs/performance.md): the UNet's calls without autograd (SDS guidance, DDIM sampling) replayed as
# CUDA graphs captured directly (torch.cuda.CUDAGraph, db3d.diffusion.graphs: the eager kernels, no
# tracing); same computation. H200 (2026-11-30 evening): UNet + CFG 59.1 -> 13.9 ms, SDS step 75.4 ->
# 43.7 ms, warm-up 0.9 s per job against 67 s for the same calls through torch.compile
# reduce-overhead (afternoon: 9.5 ms per UNet call, but slower SDS steps).
# Not compiled: DreamBooth's training step (19 % faster compiled, but its compile takes ~160 s per
# job, more than it saves in 800 steps) and the VAE encoder (no measurable gain in the SDS step).
STAGE_COMPILE = {"unet_mode": None, "cudagraphs": "direct", "vae_encoder": False}


def _backend(cfg: dict, checkpoint: Path | None = None):
    from .diffusion import build_backend

    backend = build_backend(cfg)
    if checkpoint is not None:
        backend.load_finetuned(checkpoint)
    if cfg["compile_unet"]:
        # after the weights are in; lazy: each job captures its graphs on its first calls (one per
        # input shape: SDS batch 2, sampling batch 2 x batch_size)
        for note in backend.compile_models(**STAGE_COMPILE):
            log.info("compile_unet: %s", note)
    return backend


def _prompt(cfg: dict, subject_dir: Path, prompt_id: str):
    from .data.prompts import get_prompt

    return get_prompt(cfg["dataset"]["prompts_table"], cfg["dataset"]["subjects_table"],
                      subject_dir.name, prompt_id)


def _generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _scalar(value):
    """A JSON-able number from a tensor/list/number (SDS reports t per batch element)."""
    if value is None:
        return None
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return value[0] if len(value) == 1 else list(value)
    return value


def image_grid(rows: list[torch.Tensor]) -> torch.Tensor:
    """Stack rows of [N,3,H,W] images (same N, H, W) into one [3, rows*H, N*W] picture."""
    return torch.cat([torch.cat(list(r), dim=-1) for r in rows], dim=-2)


def load_class_priors(priors_dir: Path, size: int) -> tuple[torch.Tensor, str]:
    import numpy as np
    from PIL import Image

    from .io import read_json

    manifest = read_json(priors_dir / PRIORS_MANIFEST)
    images = []
    for name in manifest["files"]:
        img = Image.open(priors_dir / name).convert("RGB").resize((size, size), Image.BICUBIC)
        images.append(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255.0)
    empty = torch.zeros(0, 3, size, size)
    return (torch.stack(images) if images else empty), manifest["class_prompt"]


# ---- class priors ---------------------------------------------------------------------------------

def class_priors(cfg: dict, class_noun: str, out_dir: Path) -> None:
    from .dreambooth import generate_class_images

    seed_everything(cfg["seed"], cfg["deterministic"])
    backend = _backend(cfg)
    class_prompt = f"a {class_noun}"
    n = cfg["dreambooth"]["num_class_images"]
    images = generate_class_images(backend, class_prompt, n, cfg["dreambooth"]["class_sample_steps"],
                                   seed=cfg["seed"]) if n else torch.zeros(0, 3, 1, 1)
    files = [f"{i:03d}.png" for i in range(len(images))]
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        for name, img in zip(files, images):
            save_image(tmp / name, img)
        write_json(tmp / PRIORS_MANIFEST, {
            "class_noun": class_noun, "class_prompt": class_prompt, "files": files,
            "backend": cfg["backend"], "num_steps": cfg["dreambooth"]["class_sample_steps"],
            "seed": cfg["seed"]})


# ---- DreamBooth -----------------------------------------------------------------------------------

def dreambooth(cfg: dict, subject_dir: Path, priors_dir: Path, out_dir: Path,
               init: Path | None = None, pseudo_views: Path | None = None) -> None:
    """Partial + full DreamBooth (no `init`), or the multi-view continuation (with `init`)."""
    from .data.subject import load_subject
    from .dreambooth import train

    db = cfg["dreambooth"]
    jobperf.note(job="dreambooth" if pseudo_views is None else "dreambooth multiview")
    seed_everything(cfg["seed"], cfg["deterministic"])
    backend = _backend(cfg, init)
    subject = load_subject(subject_dir, backend.image_size)
    instance_prompt = f"a {subject.token} {subject.class_noun}"
    images, prompts = subject.images, [instance_prompt] * len(subject.images)
    class_images, class_prompt = load_class_priors(priors_dir, backend.image_size)

    if pseudo_views is None:
        if db["partial_steps"] > db["full_steps"]:
            raise ConfigError(f"dreambooth.partial_steps ({db['partial_steps']}) exceeds "
                              f"dreambooth.full_steps ({db['full_steps']}); lower it")
        steps = db["full_steps"]
        checkpoints = {db["partial_steps"]: out_dir / PARTIAL, db["full_steps"]: out_dir / FULL}
        losses_path = out_dir / LOSSES
    else:
        views = torch_load(pseudo_views)
        view_images = F.interpolate(views["images"].float(), size=backend.image_size, mode="bilinear",
                                    antialias=True, align_corners=False).clamp(0, 1)
        images = torch.cat([images, view_images])
        prompts = prompts + multiview_captions(db["multiview_caption"], instance_prompt, views, backend)
        steps = db["multiview_steps"]
        checkpoints = {steps: out_dir / MULTIVIEW_MODEL}
        losses_path = out_dir / MULTIVIEW_LOSSES

    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    records = train(backend, images, prompts, class_images, class_prompt, steps=steps,
                    lr=db["learning_rate"], batch_size=db["batch_size"],
                    prior_loss_weight=db["prior_loss_weight"], train_text_encoder=db["train_text_encoder"],
                    lora_rank=db["lora_rank"], seed=cfg["seed"], checkpoints=checkpoints,
                    resume_path=out_dir / f".resume_{losses_path.stem}.pt")
    if pseudo_views is None and db["partial_steps"] == db["full_steps"]:
        # one step, two names (the naive case of the partial_steps ablation): the dict above
        # kept one of them, so the partial model is the full one
        with atomic_path(out_dir / PARTIAL) as tmp:
            shutil.copyfile(out_dir / FULL, tmp)
    write_json(losses_path, {"stage": "dreambooth" if pseudo_views is None else "dreambooth_multiview",
                             "steps": records, "wall_time_s": time.time() - start,
                             "num_instance_images": len(images), "instance_prompts": sorted(set(prompts))})


def multiview_captions(mode: str, instance_prompt: str, views: dict, backend) -> list[str]:
    """Captions of the pseudo views in the multi-view DreamBooth, view-suffixed.

    `instance` (the paper's reading: stage 3 teaches the subject's identity from all around, so
    every pseudo view is captioned as the subject, "a sks dog, back view", whatever prompt the
    initial NeRF was made for) or `prompt` (the prompt the pseudo view was generated with, e.g.
    "a sks dog sleeping, back view": the view stays with its recontextualisation)."""
    if mode == "instance":
        return [backend.view_prompt(instance_prompt, d) for d in views["directions"]]
    if mode == "prompt":
        return list(views["prompts"])
    raise ConfigError(f"dreambooth.multiview_caption must be instance or prompt, got {mode!r}")


# ---- NeRF by score distillation --------------------------------------------------------------------

def _shading(cfg: dict, generator: torch.Generator, latent: bool, step: int, iters: int) -> str:
    """DreamFusion's random shading: albedo-only, textureless or Lambertian, at the set ratios,
    after `nerf.shading.albedo_warmup` x iters albedo-only steps (threestudio's ambient_only_steps:
    relighting a blob before it has a shape only teaches it to be dark)."""
    if latent:
        return "albedo"  # latent features are not colours: never shaded
    s = cfg["nerf"]["shading"]
    u = torch.rand((), generator=generator).item()
    if step < s["albedo_warmup"] * iters or u < s["albedo_ratio"]:
        return "albedo"
    if u < s["albedo_ratio"] + s["textureless_ratio"]:
        return "textureless"
    return "lambertian"


class NerfFit:
    """`fit_nerf`'s set-up and the unit of work its loop repeats, shared with the benchmark.

    Built from the config, the stage, a (fine-tuned) backend and the prompt text: the field and
    background (`out_channels` = the backend's latent channels for `latent_nerf`, else 3), Adam, the
    SDS schedule, the view-dependent text embeddings, stage 3's pseudo-view targets (`pseudo_views`:
    the dict `pseudo_views` writes, or its path, read only when `stage3.recon_weight` > 0), the
    occupancy grid (on CUDA when nerfacc's ops load and `use_estimator`) and the camera/shading
    generator. `iteration(step)` is one optimisation step; `state_dict()` / `load_state_dict()`
    carry everything a resumed run needs to continue bit-identically (the torch RNG included: SDS
    draws its noise and timesteps from it).

    `res` (default: the latent size for latent_nerf, else nerf.render_resolution), `use_estimator`
    and `sampler` (passed to `render`) are for the benchmark; fit_nerf leaves them at their defaults.
    """

    def __init__(self, cfg: dict, stage: str, backend, prompt: str, *, pseudo_views: dict | Path | None = None,
                 res: int | None = None, use_estimator: bool = True, sampler: str = "auto"):
        from .guidance import ScoreDistillation
        from .nerf import build_field
        from .nerf.objective import max_weight
        from .nerf.render import make_estimator, nerfacc_cuda_available

        latent = STAGES[stage].latent
        if latent and not backend.is_latent:
            raise ConfigError(f"{stage} needs a latent-space backend; backend {cfg['backend']!r} works in "
                              f"pixels (use backend sd, or tiny with models.tiny_space: latent, or drop {stage} "
                              "from variants)")
        if stage == "stage3" and pseudo_views is None:
            raise ConfigError("stage3 needs --pseudo-views (the stage-2 output)")

        self.cfg, self.stage, self.backend, self.latent = cfg, stage, backend, latent
        device = self.device = backend.device
        field, background = build_field(cfg["nerf"], out_channels=backend.model_channels if latent else 3)
        self.field, self.background = field.to(device), background.to(device)
        # the background learns 10x slower than the field (threestudio's dreamfusion configs: 0.001
        # vs 0.01): a background MLP as fast as the field can paint the whole view and leave it empty
        field_params, background_params = list(self.field.parameters()), list(self.background.parameters())
        self.params = field_params + background_params
        self.optimizer = torch.optim.Adam(
            [{"params": field_params, "lr": cfg["sds"]["learning_rate"]},
             {"params": background_params, "lr": cfg["sds"]["background_learning_rate"]}],
            betas=(0.9, 0.99), eps=1e-15)
        self.iters = cfg[stage]["iters"]
        self.sds = ScoreDistillation(backend, cfg["sds"], self.iters)
        default_res = backend.latent_size if latent else cfg["nerf"]["render_resolution"]
        self.res = int(res) if res is not None else default_res

        with torch.no_grad():
            self.uncond = backend.encode_text([""])
            self.cond = {d: backend.encode_text([backend.view_prompt(prompt, d)])
                         for d in ("front", "side", "back", "overhead")}

        self.recon_weight = cfg["stage3"]["recon_weight"] if stage == "stage3" else 0.0
        if self.recon_weight > 0:
            views = pseudo_views if isinstance(pseudo_views, dict) else torch_load(pseudo_views)
            self.view_cams = views["cameras"].to(device)
            self.view_targets = F.interpolate(views["images"].float(), size=self.res, mode="bilinear",
                                              antialias=True, align_corners=False).to(device)

        # On CUDA, nerfacc's occupancy grid skips empty space (updated every step as in its examples);
        # on CPU the plain-PyTorch sampler marches every ray.
        self.estimator = None
        if use_estimator and device.type == "cuda" and nerfacc_cuda_available():
            self.estimator = make_estimator(cfg["nerf"]["bound"], device=device)
        self.sampler = sampler
        self.reg = cfg["nerf"]["regularisers"]
        self.orientation_on = max_weight(self.reg["orientation"]) > 0
        self.random_bg = 0.0 if latent else cfg["nerf"]["background_random_color"]
        self.share_every = cfg["nerf"]["grad_share_every"]
        self.generator = _generator(cfg["seed"])
        self.last_info: dict = {}  # the main render's `info` of the last iteration (sampler, samples)
        self._pending: list[tuple[dict, dict, torch.Tensor]] = []  # records waiting for `flush`

    def iteration(self, step: int) -> tuple[torch.Tensor, dict]:
        """One optimisation step: grid update, camera + shading (+ random background colour) draw,
        render, SDS + the weighted terms on SDS's scale (regularisers, stage 3's reconstruction
        render; db3d.nerf.objective), Adam step. Every `nerf.grad_share_every` steps each term is
        differentiated on its own (the gradient shares). Returns (loss, the step's record), whose
        numbers (sds, recon, loss, t, grad) are filled in by the next `flush` (or `resume_state`).
        The `record_function` labels name its parts in a profile (`python -m db3d.bench.profile`)."""
        from .nerf import render, sample_cameras, view_direction
        from .nerf.objective import term_gradients, weighted_terms
        from .nerf.render import update_estimator

        cfg, reg, res, latent = self.cfg, self.reg, self.res, self.latent
        field, background, estimator, generator = self.field, self.background, self.estimator, self.generator
        if estimator is not None:
            with record_function("nerf.grid_update"):
                update_estimator(estimator, field, step, num_samples=cfg["nerf"]["num_samples"])
        cams = sample_cameras(1, cfg["nerf"]["camera"], generator)
        direction = view_direction(float(cams.azimuth_deg[0]), float(cams.elevation_deg[0]))
        cams = cams.to(self.device)
        shading = _shading(cfg, generator, latent, step, self.iters)
        bg_color = None
        if self.random_bg > 0 and torch.rand((), generator=generator).item() < self.random_bg:
            bg_color = torch.rand(3, generator=generator).to(self.device)
        with record_function("nerf.render"):
            out = render(field, background, cams, res, res, shading=shading,
                         ambient=cfg["nerf"]["shading"]["ambient"], num_samples=cfg["nerf"]["num_samples"],
                         sampler=self.sampler, estimator=estimator, generator=generator,
                         normals=shading != "albedo" or self.orientation_on, background_color=bg_color)
        with record_function("sds"):
            loss_sds, info = self.sds(out.image, self.cond[direction], self.uncond, step, generator=None,
                                      latent=latent, defer=True)
        scale = self.sds.elements_per_image
        terms = {"sds": loss_sds, **weighted_terms(reg, out.losses, step, self.iters, scale)}
        images = {"sds": out.image}
        record = {"step": step, "direction": direction, "shading": shading, "random_background": bg_color is not None}
        values = {"sds": loss_sds}
        if self.recon_weight > 0:
            i = int(torch.randint(len(self.view_cams), (1,), generator=generator))
            with record_function("nerf.recon_render"):
                view = render(field, background, self.view_cams[i:i + 1], res, res, shading="albedo",
                              ambient=cfg["nerf"]["shading"]["ambient"], num_samples=cfg["nerf"]["num_samples"],
                              sampler=self.sampler, estimator=estimator, generator=generator, normals=False)
            loss_recon = F.mse_loss(view.image, self.view_targets[i:i + 1])
            terms["recon"] = (scale * self.recon_weight) * loss_recon
            images["recon"] = view.image
            values["recon"] = loss_recon
        loss = sum(terms.values())
        with record_function("backward"):
            self.optimizer.zero_grad(set_to_none=True)
            if self.share_every and step % self.share_every == 0:
                values.update(term_gradients(terms, self.params, images))
            else:
                loss.backward()
        with record_function("adam"):
            self.optimizer.step()
        values["loss"] = loss
        # the record's numbers stay on the device until `flush` (every RESUME_EVERY steps in
        # fit_nerf): reading them here would make the host wait for the GPU every step
        self._pending.append((record, {k: v.detach() for k, v in values.items()}, info["stats"]))
        self.last_info = out.info
        return loss, record

    def flush(self) -> None:
        """Fill in the records `iteration` returned since the last flush (losses, t) with one
        device-to-host copy, and log any zeroed SDS gradient."""
        from .nerf.objective import nest_shares

        if not self._pending:
            return
        parts = [torch.cat([torch.stack([v.detach().float() for v in values.values()]), stats])
                 for _, values, stats in self._pending]
        flat = torch.cat(parts).tolist()
        at = 0
        for (record, values, _), part in zip(self._pending, parts):
            n = len(values)
            vals, stats = flat[at:at + n], flat[at + n:at + part.numel()]
            at += part.numel()
            info = self.sds.host_info(stats, record["step"])
            record.update(zip(values, vals))
            record["t"] = _scalar(info["t"])
            nest_shares(record)
        self._pending.clear()

    def state_dict(self) -> dict:
        return {"field": self.field.state_dict(), "background": self.background.state_dict(),
                "optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state(),
                "estimator": self.estimator.state_dict() if self.estimator is not None else None,
                "torch_rng": torch.get_rng_state()}

    def load_state_dict(self, state: dict) -> None:
        self.field.load_state_dict(state["field"])
        self.background.load_state_dict(state["background"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.estimator is not None and state.get("estimator") is not None:
            self.estimator.load_state_dict(state["estimator"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])

    def resume_state(self, next_step: int, records: list[dict], elapsed: float) -> dict:
        """What fit_nerf writes to `.resume.pt`: `state_dict()` + the loop's position (records flushed)."""
        self.flush()
        return {**self.state_dict(), "step": next_step, "records": records, "elapsed": elapsed}


def fit_nerf(cfg: dict, stage: str, dreambooth_ckpt: Path | None, prompt_id: str, subject_dir: Path,
             out_dir: Path, pseudo_views: Path | None = None) -> None:
    from .nerf import save_nerf

    jobperf.note(job=f"nerf {stage}")
    seed_everything(cfg["seed"], cfg["deterministic"])
    prompt = _prompt(cfg, subject_dir, prompt_id)  # first: a bad prompt id fails before a model loads
    backend = _backend(cfg, dreambooth_ckpt)
    # a stage guided by the base model is not personalised: its prompt names the class, not the token
    text = prompt.text if STAGES[stage].personalised else prompt.generic_text
    fit = NerfFit(cfg, stage, backend, text, pseudo_views=pseudo_views)
    device, iters = fit.device, fit.iters

    resume_path = out_dir / ".resume.pt"
    records: list[dict] = []
    start_step, elapsed = 0, 0.0
    settings = resume_settings(cfg=cfg, stage=stage, prompt=prompt.text, dreambooth=file_sha256(dreambooth_ckpt),
                               pseudo_views=file_sha256(pseudo_views))
    state = load_resume_state(resume_path, settings)
    if state is not None:
        fit.load_state_dict(state)
        start_step, records, elapsed = state["step"], state["records"], state["elapsed"]
        log.info("resuming %s from step %d", stage, start_step)

    if device.type == "cuda":
        jobperf.record_peak()  # the job's peak (model build included) before the loop's is measured
        torch.cuda.reset_peak_memory_stats(device)
    start = time.time() - elapsed
    timing = jobperf.loop(stage, iters, start_step)
    for step in tqdm(range(start_step, iters), desc=f"{stage} {subject_dir.name}/{prompt_id}",
                     initial=start_step, total=iters, mininterval=5):
        _, record = fit.iteration(step)
        records.append(record)
        if (step + 1) % RESUME_EVERY == 0 and step + 1 < iters:
            torch_save({**fit.resume_state(step + 1, records, time.time() - start), "settings": settings}, resume_path)
            timing.mark(step + 1)  # resume_state read the losses back: the GPU has caught up
    fit.flush()
    timing.mark(iters)

    loop_time = time.time() - start
    meta = {"stage": stage, "subject": subject_dir.name, "prompt_id": prompt_id, "prompt": text,
            "latent": fit.latent, "backend": cfg["backend"], "iters": iters, "seed": cfg["seed"],
            "sampler": fit.last_info.get("sampler")}
    perf = {"loop_time_s": loop_time, "iters_per_s": (iters - start_step) / max(loop_time - elapsed, 1e-9),
            "render_resolution": fit.res, "device": str(device),
            "peak_gpu_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}
    log.info("%s: %.2f it/s, peak GPU memory %s GiB, sampler %s", stage, perf["iters_per_s"],
             perf["peak_gpu_mem_gib"], meta["sampler"])
    save_nerf(out_dir / NERF, fit.field, fit.background, meta)
    _save_turntable(cfg, backend, fit.field, fit.background, fit.latent, out_dir / TURNTABLE)
    write_json(out_dir / LOSSES, {"stage": stage, "steps": records, "wall_time_s": time.time() - start,
                                         "meta": meta, "perf": perf})
    resume_path.unlink(missing_ok=True)


@torch.no_grad()
def _save_turntable(cfg: dict, backend, field, background, latent: bool, path: Path, n: int = 8) -> None:
    """A strip of albedo renders around the object (decoded through the VAE for latent fields)."""
    from .nerf import orbit_cameras, render

    camera = cfg["nerf"]["camera"]
    cams = orbit_cameras(n, sum(camera["radius"]) / 2, PREVIEW_ELEVATION_DEG,
                         sum(camera["fov_deg"]) / 2).to(backend.device)
    res = backend.latent_size if latent else cfg["nerf"]["render_resolution"]
    out = render(field, background, cams, res, res, shading="albedo", ambient=1.0,
                 num_samples=cfg["nerf"]["num_samples"], train=False, normals=False)
    images = backend.decode(out.image) if latent else out.image
    save_image(path, image_grid([images.float().cpu().clamp(0, 1)]))


# ---- stage 2: pseudo multi-view images -------------------------------------------------------------

def pseudo_views(cfg: dict, nerf_path: Path, dreambooth_ckpt: Path, prompt_id: str, subject_dir: Path,
                 out_dir: Path) -> None:
    from .nerf import load_nerf

    seed_everything(cfg["seed"], cfg["deterministic"])
    prompt = _prompt(cfg, subject_dir, prompt_id)  # first: a bad prompt id fails before a model loads
    backend = _backend(cfg, dreambooth_ckpt)
    field, background, meta = load_nerf(nerf_path)
    if meta.get("latent"):
        raise DataError(f"{nerf_path} is a latent NeRF; stage 2 needs the RGB stage-1 NeRF")
    field, background = field.to(backend.device), background.to(backend.device)
    views = img2img_views(cfg, backend, field, background, prompt.text)
    views["meta"] = {"prompt_id": prompt_id, "subject": subject_dir.name, "seed": cfg["seed"]}
    save_pseudo_views(out_dir, views)


def img2img_views(cfg: dict, backend, field, background, prompt: str, *, num_views: int | None = None,
                  num_steps: int | None = None, progress: bool = True) -> dict:
    """Stage 2 after loading the NeRF: albedo renders at `stage2.num_views` orbit cameras, each
    noised to `stage2.noise_level` and denoised by `backend` with its view-suffixed prompt.
    Returns {images, renders, cameras, directions, prompts, noise_level} on CPU. `num_views` and
    `num_steps` override the config (the benchmark's warm-up)."""
    from .nerf import orbit_cameras, render, view_direction

    s2 = cfg["stage2"]
    fov = sum(cfg["nerf"]["camera"]["fov_deg"]) / 2
    n = int(num_views or s2["num_views"])
    steps = int(num_steps or s2["sample_steps"])
    cams = orbit_cameras(n, s2["radius"], s2["elevation_deg"], fov).to(backend.device)
    # rendered at the resolution img2img works at (512 for sd), not the SDS render's 64 px upsampled:
    # the encoder then sees the NeRF's own detail instead of interpolation blur
    res = backend.image_size if s2["render_resolution"] == "backend" else int(s2["render_resolution"])
    with torch.no_grad():
        out = render(field, background, cams, res, res, shading="albedo", ambient=1.0,
                     num_samples=cfg["nerf"]["num_samples"], train=False, normals=False)
    renders = out.image.clamp(0, 1)
    directions = [view_direction(float(a), float(e)) for a, e in zip(cams.azimuth_deg, cams.elevation_deg)]
    prompts = [backend.view_prompt(prompt, d) for d in directions]
    generator = _generator(cfg["seed"], backend.device)
    images = []
    timing = jobperf.loop("img2img views", len(prompts))
    for i in tqdm(range(0, len(prompts), s2["batch_size"]), desc="img2img", mininterval=5, disable=not progress):
        chunk = slice(i, i + s2["batch_size"])
        images.append(backend.sample(prompts[chunk], steps, s2["guidance_scale"], generator,
                                     init_images=renders[chunk], strength=s2["noise_level"]).float().cpu())
        timing.mark(min(i + s2["batch_size"], len(prompts)))
    return {"images": torch.cat(images), "renders": renders.cpu(), "cameras": cams.to("cpu"),
            "directions": directions, "prompts": prompts, "noise_level": s2["noise_level"],
            "sampler": out.info["sampler"]}


def save_pseudo_views(out_dir: Path, views: dict) -> None:
    """`pseudo_views.pt` (the dict, atomically) and `pseudo_views.png` (renders above the img2img images)."""
    images = views["images"]
    with atomic_path(out_dir / PSEUDO_VIEWS) as tmp:
        torch.save(views, tmp)
    renders_up = F.interpolate(views["renders"].float(), size=images.shape[-1], mode="nearest")
    save_image(out_dir / PSEUDO_VIEWS_PNG, image_grid([renders_up, images]))
