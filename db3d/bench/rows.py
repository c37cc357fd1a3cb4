"""The benchmark's rows: each `row_*` times one unit of work the pipeline repeats, through the
stages' own objects (db3d.bench.workloads), and returns its row dict(s) (db3d.bench.report.Row's
fields). A mixin of db3d.bench.runner.Bench, which owns the timer, the backend, the repeat counts
and the error capture around each row.
"""
from __future__ import annotations

import itertools
import statistics
import subprocess
import sys
import time

from .probes import release_training


class Rows:
    def row_start(self, cfg: dict) -> dict:
        """A stage job's process start: a fresh interpreter importing what `python -m db3d` and the
        stages import, and creating the CUDA context (wall clock, like a job's start)."""
        code = ("import torch, diffusers, transformers; import db3d.cli, db3d.stages, db3d.diffusion, db3d.nerf, "
                "db3d.dreambooth, db3d.guidance\n"
                "if torch.cuda.is_available() and %r != 'cpu': torch.zeros(1, device='cuda'); torch.cuda.synchronize()"
                % str(self.device.type))
        from ..config import REPO_ROOT

        def start():
            subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True, capture_output=True, timeout=600)
        # this process imported the same files: they are in the page cache, as for every job but a machine's first
        times = [self.timer.wall_ms(start) for _ in range(self.long_repeats)]
        return dict(row="process_start", times=times, unit="run",
                    note="fresh python: import torch, diffusers, transformers, db3d's stage modules + CUDA context "
                         "(files in the page cache)")

    def row_unet(self, cfg: dict) -> list[dict]:
        torch, b = self.torch, self.backend
        with torch.no_grad():
            cond = b.encode_text([b.view_prompt(_prompt(), "front")])
            uncond = b.encode_text([""])
        x = torch.randn(1, b.model_channels, b.latent_size, b.latent_size, device=b.device)
        g = float(cfg["sds"]["guidance_scale"])

        def call():
            with torch.no_grad():
                b.predict_noise(x, 500, cond, uncond, g)
        times = self._repeat(call)
        n = self.last_warmup_n
        return [dict(times=times, res=b.latent_size, batch=1,
                     note=f"CFG in one UNet call of batch 2, {b.model_channels}x{b.latent_size}x{b.latent_size} input"
                          + self._warmup_note()),
                self._warmup_row("unet_cfg_b1", n, statistics.median(times), res=b.latent_size, batch=1)]

    def row_sds(self, cfg: dict, stage: str, res: int, occgrid: str) -> list[dict]:
        from .workloads import STEADY_STATE_STEP, NerfRun

        run = NerfRun(cfg, self.backend, stage=stage, res=res, occgrid=occgrid)
        run.warm_estimator()
        steps = itertools.count(STEADY_STATE_STEP)
        block = self.sds_block

        def one_block():
            for _ in range(block):
                run.step(next(steps))
        t0 = time.perf_counter()
        one_block()  # warm-up block
        self.timer.sync()
        self.last_warmup_s = time.perf_counter() - t0
        run.samples = 0
        times = [self.timer.events_ms(one_block) / block for _ in range(self.sds_repeats)]
        n_iter = block * self.sds_repeats
        run.fit.flush()  # the records' numbers (and the SDS non-finite count) after the timed blocks
        nan = run.sds.nan_count
        grid = ("occupancy grid" if run.estimator is not None
                else {"off": "no grid", "dense": "dense torch sampler"}.get(occgrid, "no grid (CPU or no nerfacc CUDA ops)"))
        note = (f"sampler {run.sampler} ({grid}), {run.samples / n_iter:.0f} samples/iter, "
                f"{cfg['nerf']['num_samples']} samples/ray max, guidance {cfg['sds']['guidance_scale']:g}"
                + (f", {nan} non-finite SDS grads" if nan else "")
                + (", + reconstruction render" if stage == "stage3" else "")
                + (f"; warm-up block {self.last_warmup_s:.1f} s ({self.compiled_what})" if self.compiled else ""))
        name = "sds_step" if stage == "stage1" else "sds_step_stage3"
        return [dict(row=name, times=times, res=res, batch=1, note=note),
                self._warmup_row(name, block, statistics.median(times), res=res, batch=1)]

    def row_db(self, cfg: dict) -> list[dict]:
        from .workloads import DreamBoothRun

        db = cfg["dreambooth"]
        run = None
        try:
            run = DreamBoothRun(cfg, self.backend, lora_rank=int(db["lora_rank"]),
                                train_text_encoder=bool(db["train_text_encoder"]))
            steps = itertools.count(1)
            times = self._repeat(lambda: run.step(next(steps)))
            last = run.records[-1]["loss"]
            return [dict(times=times, res=self.backend.image_size, batch=2 * int(db["batch_size"]),
                         note=f"{run.trained_parameters / 1e6:.1f} M trained params"
                              f"{' (LoRA r=' + str(db['lora_rank']) + ')' if db['lora_rank'] else ''}"
                              f"{' + text encoder' if db['train_text_encoder'] else ''}, loss {last:.4f}"
                              + self._warmup_note(train=True)),
                    self._warmup_row("dreambooth_step", self.last_warmup_n, statistics.median(times), train=True,
                                     res=self.backend.image_size, batch=2 * int(db["batch_size"]))]
        finally:
            del run
            release_training(self.backend)

    def row_ref(self, cfg: dict) -> dict:
        from .workloads import DiffusersDreamBooth

        db = cfg["dreambooth"]
        ref = None
        try:
            ref = DiffusersDreamBooth(cfg, self.backend, lora_rank=int(db["lora_rank"]),
                                      train_text_encoder=bool(db["train_text_encoder"]))
            losses = []
            times = self._repeat(lambda: losses.append(ref.step()))
            loss = float(losses[-1])
            return dict(row="diffusers_dreambooth_step", times=times, res=self.backend.image_size,
                        batch=2 * int(db["batch_size"]),
                        note=("text embeddings precomputed" if ref.precompute else "text encoder every step")
                             + f", loss {loss:.4f}")
        finally:
            del ref
            release_training(self.backend)

    def row_saves(self, cfg: dict, occgrid: str) -> list[dict]:
        from ..io import atomic_path, torch_save
        from .workloads import DreamBoothRun

        db = cfg["dreambooth"]
        scratch = self.scratch / "saves"
        scratch.mkdir(parents=True, exist_ok=True)
        run = None
        try:
            run = DreamBoothRun(cfg, self.backend, lora_rank=int(db["lora_rank"]),
                                train_text_encoder=bool(db["train_text_encoder"]))
            run.step(1)
            resume = scratch / ".resume_losses.pt"

            def save_resume():
                torch_save(run.resume_state(10), resume)
            t_resume = [self.timer.wall_ms(save_resume) for _ in range(self.long_repeats)]
            size_resume = resume.stat().st_size / 2**30
            resume.unlink()
            ckpt = scratch / "full.safetensors"

            def save_ckpt():
                with atomic_path(ckpt) as tmp:
                    self.backend.save_finetuned(tmp)
            t_ckpt = [self.timer.wall_ms(save_ckpt) for _ in range(self.long_repeats)]
            size_ckpt = ckpt.stat().st_size / 2**30
            ckpt.unlink()
        finally:
            del run
            release_training(self.backend)
        return [dict(row="dreambooth_resume_save", times=t_resume, unit="save",
                     note=f"{size_resume:.2f} GiB (trained weights + AdamW state), torch.save"),
                dict(row="dreambooth_checkpoint_save", times=t_ckpt, unit="save",
                     note=f"{size_ckpt:.2f} GiB safetensors (save_finetuned)")]

    def row_nerf_save(self, cfg: dict, occgrid: str) -> dict:
        from ..io import torch_save
        from .workloads import NerfRun

        scratch = self.scratch / "saves"
        scratch.mkdir(parents=True, exist_ok=True)
        run = NerfRun(cfg, self.backend, stage="stage1", occgrid=occgrid)
        run.step(0)
        path = scratch / ".resume.pt"
        times = [self.timer.wall_ms(lambda: torch_save(run.resume_state(24), path)) for _ in range(self.long_repeats)]
        size = path.stat().st_size / 2**20
        path.unlink()
        return dict(row="nerf_resume_save", times=times, unit="save",
                    note=f"{size:.0f} MiB (field + Adam state, grid {cfg['nerf']['grid_resolution']})")

    def row_img2img(self, cfg: dict) -> list[dict]:
        from .workloads import Img2ImgRun

        s2 = cfg["stage2"]
        run = Img2ImgRun(cfg, self.backend, self.scratch / "stage2")
        # warm-up (compiled: 3 UNet calls at noise 0.5, so the CUDA graph is recorded before the timing)
        warm_steps = 6 if self.compiled else 2
        self.last_warmup_s = self.timer.wall_ms(
            lambda: run.run(num_steps=warm_steps, num_views=min(int(s2["batch_size"]), int(s2["num_views"])))) / 1e3
        times = [self.timer.wall_ms(run.run) for _ in range(self.long_repeats)]
        n_run = min(int(s2["sample_steps"] * s2["noise_level"]), int(s2["sample_steps"]))
        return [dict(row="img2img_views", times=times, unit="run", res=self.backend.image_size,
                     batch=int(s2["num_views"]),
                     note=f"{s2['num_views']} views in batches of {s2['batch_size']}, {n_run} of {s2['sample_steps']} "
                          f"DDIM steps (noise {s2['noise_level']}), CFG {s2['guidance_scale']}, render at "
                          f"{cfg['nerf']['render_resolution']}"),
                self._warmup_row("img2img_views", max(int(warm_steps * s2["noise_level"]), 1), None,
                                 res=self.backend.image_size, batch=min(int(s2["batch_size"]), int(s2["num_views"])))]

    def row_priors(self, cfg: dict) -> list[dict]:
        from .workloads import PRIOR_BATCH, class_prior_batch

        out = self.scratch / "priors"
        self.last_warmup_s = self.timer.wall_ms(lambda: class_prior_batch(cfg, self.backend, out, num_steps=2)) / 1e3
        times = [self.timer.wall_ms(lambda: class_prior_batch(cfg, self.backend, out))
                 for _ in range(self.long_repeats)]
        return [dict(row="class_prior_batch", times=times, unit="batch", res=self.backend.image_size,
                     batch=PRIOR_BATCH,
                     note=f"{PRIOR_BATCH} images x {cfg['dreambooth']['class_sample_steps']} DDIM steps, CFG 7.5"),
                self._warmup_row("class_prior_batch", 2, None, res=self.backend.image_size, batch=PRIOR_BATCH)]

    def row_eval(self, cfg: dict) -> list[dict]:
        from .workloads import EvalRun

        run = EvalRun(cfg, self.device, self.scratch / "eval")
        self.last_warmup_s = self.timer.wall_ms(run.run) / 1e3  # warm-up
        times = [self.timer.wall_ms(run.run) for _ in range(self.long_repeats)]
        ev = cfg["eval"]
        labels = ", ".join(c.label for c in run.clips)
        return [dict(row="eval_run", times=times, unit="run", res=int(ev["resolution"]), batch=int(ev["num_views"]),
                     note=f"{ev['num_views']} views at {ev['resolution']}, CLIPs {labels} (built in "
                          f"{run.build_s:.1f} s: row eval_models_build), pool of {len(run.texts['pool'])}, GIF + "
                          f"contact sheet; not included: DINO, CLIP-I, Janus, mesh (evaluate logs their times in "
                          f"eval_info.json)"),
                dict(row="eval_models_build", times=[run.build_s * 1e3], unit="run",
                     note=f"building {labels} (random weights: stands in for loading them)"),
                self._warmup_row("eval_run", 1, statistics.median(times), res=int(ev["resolution"]),
                                 batch=int(ev["num_views"]))]


def _prompt() -> str:
    from .workloads import PROMPT

    return PROMPT
