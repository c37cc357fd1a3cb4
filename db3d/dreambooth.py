"""DreamBooth fine-tuning (Ruiz et al. 2023) with class-prior preservation, on any `DiffusionBackend`.

As diffusers' examples/dreambooth/train_dreambooth.py: each step concatenates `batch_size` instance
images (with their prompts: "a sks dog"; in multi-view DreamBooth the pseudo views' captions,
"a sks dog, side view" or their NeRF prompt as `dreambooth.multiview_caption` says, db3d.stages)
and `batch_size` class-prior images ("a dog") into ONE forward pass, and minimises
`instance MSE + prior_loss_weight * prior MSE` with AdamW (weight decay 1e-2, grad-norm clip 1).

Determinism: all randomness of step s (which images, noise, t, VAE posterior sample) is drawn
from a generator seeded by (seed, s), so a run is reproducible from its seed alone and a resumed
run is bit-identical to an uninterrupted one without having to restore RNG streams mid-epoch.

Resume: a state (trained weights, optimiser, grad scaler, step, losses, torch RNG) is written
atomically to `resume_path` every `RESUME_EVERY_STEPS` steps while writing the last one took at
most `RESUME_MAX_OVERHEAD` of the training time since it, and in any case every `resume_every_s`
seconds (or exactly every `resume_every` steps when given). Steps, so a short job killed early does
not restart from step 0; the overhead bound, because for full fine-tuning of SD the state is
~9.7 GiB and takes ~13 s to write on an H100 (the old every-10-steps rule tripled the stage's
time). `train` continues from it when present and removes it once training has finished and every
checkpoint is written. A checkpoint written before the state (e.g. the partial model at step 150
of 800) is kept as a hidden hard link beside it (`.<name>.resume-copy`): Snakemake deletes a
rule's outputs before rerunning it, and a resumed run never passes that step again.
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Sequence

import torch
from tqdm import tqdm

from . import jobperf
from .diffusion.base import DiffusionBackend
from .errors import DataError
from .io import atomic_path, torch_load, torch_save

log = logging.getLogger(__name__)

RESUME_EVERY_S = 600.0  # at most ten minutes of DreamBooth lost to a killed job
RESUME_EVERY_STEPS = 50  # ... and at most 50 steps where the state is cheap to write
RESUME_MAX_OVERHEAD = 0.05  # (cheap: its last write took <= 5 % of the training time since)


def _kept(path: Path) -> Path:
    """The hidden copy of checkpoint `path` that a resumed run restores it from."""
    return Path(path).with_name(f".{Path(path).name}.resume-copy")


def _link_or_copy(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        try:
            os.link(src, tmp)  # free: the same file under a second name
        except OSError:  # a file system without hard links
            shutil.copyfile(src, tmp)


def _step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(step)) % 2**63)


def _indices(n: int, seed: int, stream: int, start: int, count: int) -> list[int]:
    """Items `start .. start+count-1` of an endless sequence of shuffled epochs over range(n),
    as a DataLoader with shuffle=True would give, but computable for any position."""
    out = []
    for pos in range(start, start + count):
        epoch, k = divmod(pos, n)
        g = torch.Generator().manual_seed((int(seed) * 7_919 + stream * 104_729 + epoch) % 2**63)
        out.append(int(torch.randperm(n, generator=g)[k]))
    return out


@torch.no_grad()
def generate_class_images(backend: DiffusionBackend, class_prompt: str, n: int, num_steps: int, seed: int,
                          *, batch_size: int = 4, guidance_scale: float = 7.5,
                          progress: bool = True) -> torch.Tensor:
    """`n` prior-preservation images of the class prompt ("a dog"): [n,3,S,S] in [0,1], on CPU."""
    g = torch.Generator().manual_seed(int(seed))
    out = []
    timing = jobperf.loop("class images", n)
    for start in tqdm(range(0, n, batch_size), desc="class images", file=sys.stderr, disable=not progress):
        k = min(batch_size, n - start)
        out.append(backend.sample([class_prompt] * k, num_steps=num_steps, guidance_scale=guidance_scale,
                                  generator=g).cpu())
        timing.mark(start + k)  # the batch is on the CPU: the GPU has finished it
    if not out:
        return torch.zeros(0, 3, backend.image_size, backend.image_size)
    return torch.cat(out)


def _fingerprint(**kw) -> dict:
    return {k: (sorted((int(s), str(p)) for s, p in v.items()) if isinstance(v, dict) else v) for k, v in kw.items()}


class DreamBoothTrainer:
    """`train`'s set-up and the unit of work its loop repeats, shared with the benchmark.

    Holds the data (instance images with one prompt each, class images and prompt), the trainable
    parameters (`backend.trainable_parameters`: LoRA adapters / text encoder as asked), AdamW and
    the grad scaler. `train_step(step)` is optimisation step `step` (1-based); `state_dict()` /
    `load_state_dict()` carry the trained weights, optimiser, scaler and torch RNG for resuming.
    """

    def __init__(self, backend: DiffusionBackend, instance_images: torch.Tensor,
                 instance_prompts: Sequence[str] | str, class_images: torch.Tensor | None, class_prompt: str, *,
                 lr: float, batch_size: int, prior_loss_weight: float, train_text_encoder: bool, lora_rank: int,
                 seed: int, max_grad_norm: float = 1.0):
        n_inst = int(instance_images.shape[0])
        if n_inst == 0:
            raise DataError("DreamBooth needs at least one instance image")
        prompts = [instance_prompts] * n_inst if isinstance(instance_prompts, str) else list(instance_prompts)
        if len(prompts) != n_inst:
            raise ValueError(f"{len(prompts)} instance prompts for {n_inst} instance images")
        self.backend = backend
        self.instance_images, self.prompts = instance_images, prompts
        self.class_images, self.class_prompt = class_images, class_prompt
        self.batch_size, self.prior_loss_weight, self.seed = batch_size, prior_loss_weight, seed
        self.max_grad_norm = max_grad_norm
        self.use_prior = class_images is not None and class_images.shape[0] > 0 and prior_loss_weight > 0
        self.n_inst, self.n_cls = n_inst, int(class_images.shape[0]) if self.use_prior else 0

        self.params = backend.trainable_parameters(train_text_encoder=train_text_encoder, lora_rank=lora_rank)
        self.optimizer = torch.optim.AdamW(self.params, lr=lr, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
        fp16 = backend.device.type == "cuda" and backend.dtype == torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=fp16)

    def train_step(self, step: int) -> dict:
        """Optimisation step `step`: its batch (instance + class images in one forward pass), the
        loss, backward, grad-norm clip, AdamW. Returns {step, loss, loss_instance, loss_prior}."""
        seed, batch_size = self.seed, self.batch_size
        g = _step_generator(seed, step)
        inst = _indices(self.n_inst, seed, 0, (step - 1) * batch_size, batch_size)
        images = self.instance_images[inst]
        batch_prompts = [self.prompts[i] for i in inst]
        if self.use_prior:
            cls = _indices(self.n_cls, seed, 1, (step - 1) * batch_size, batch_size)
            images = torch.cat([images.to(self.class_images.dtype), self.class_images[cls]])
            batch_prompts += [self.class_prompt] * batch_size
        losses = self.backend.training_loss(images, batch_prompts, generator=g)
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
        return {"step": step, "loss": vals[0], "loss_instance": vals[1], "loss_prior": vals[2]}

    def state_dict(self) -> dict:
        return {"weights": {k: v.cpu() for k, v in self.backend.finetuned_state_dict().items()},
                "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                "rng": torch.get_rng_state()}

    def load_state_dict(self, state: dict) -> None:
        _load_weights(self.backend, state["weights"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"])

    def resume_state(self, fingerprint: dict, step: int, records: list[dict]) -> dict:
        """What `train` writes to its resume path: settings fingerprint, position, `state_dict()`."""
        return {"fingerprint": fingerprint, "step": step, "records": records, **self.state_dict()}


def train(backend: DiffusionBackend, instance_images: torch.Tensor, instance_prompts: Sequence[str] | str,
          class_images: torch.Tensor | None, class_prompt: str, *, steps: int, lr: float, batch_size: int,
          prior_loss_weight: float, train_text_encoder: bool, lora_rank: int, seed: int,
          checkpoints: dict[int, Path], resume_path: Path | None, resume_every: int | None = None,
          resume_every_s: float = RESUME_EVERY_S,
          max_grad_norm: float = 1.0, progress: bool = True) -> list[dict]:
    """Fine-tune `backend` in place; returns one record per step ({step, loss, loss_instance, loss_prior}).

    - `instance_images` [N,3,H,W] in [0,1] with one prompt each (`instance_prompts`, or one string for all).
    - `class_images` [M,3,H,W] (None or empty, or `prior_loss_weight == 0`: no prior term).
    - `checkpoints` {step: path}: `backend.save_finetuned` after that many optimiser steps
      (step 0 = before training), each written atomically.
    - On return the backend holds the trained weights, frozen (`backend.freeze()`), ready for SDS.
    """
    bad = [s for s in checkpoints if not 0 <= int(s) <= steps]
    if bad:
        raise ValueError(f"checkpoint steps {bad} outside 0..{steps}")
    trainer = DreamBoothTrainer(backend, instance_images, instance_prompts, class_images, class_prompt, lr=lr,
                                batch_size=batch_size, prior_loss_weight=prior_loss_weight,
                                train_text_encoder=train_text_encoder, lora_rank=lora_rank, seed=seed,
                                max_grad_norm=max_grad_norm)
    fingerprint = _fingerprint(steps=steps, lr=lr, batch_size=batch_size, prior_loss_weight=prior_loss_weight,
                               train_text_encoder=bool(train_text_encoder), lora_rank=int(lora_rank), seed=int(seed),
                               n_inst=trainer.n_inst, n_cls=trainer.n_cls, prompts=trainer.prompts,
                               class_prompt=class_prompt)

    start, records = 0, []
    resume_path = Path(resume_path) if resume_path is not None else None
    if resume_path is not None and resume_path.exists():
        state = torch_load(resume_path)
        if state.get("fingerprint") != fingerprint:
            log.warning("resume state %s is for other settings; starting over", resume_path)
        else:
            missing = [p for s, p in checkpoints.items() if s <= int(state["step"]) and not Path(p).exists()
                       and not _kept(p).exists()]
            if missing:
                log.warning("resume state %s is past checkpoint %s, which is gone; starting over",
                            resume_path, missing[0])
            else:
                trainer.load_state_dict(state)
                start, records = int(state["step"]), list(state["records"])
                for s, p in checkpoints.items():  # deleted by Snakemake before the rerun: restored
                    if s <= start and not Path(p).exists():
                        _link_or_copy(_kept(p), Path(p))
                log.info("resuming DreamBooth from step %d (%s)", start, resume_path)

    def save_checkpoint(step: int) -> None:
        if step in checkpoints:
            with atomic_path(checkpoints[step]) as tmp:
                backend.save_finetuned(tmp)
            if resume_path is not None and step < steps:  # a resumed run will not pass this step again
                _link_or_copy(Path(checkpoints[step]), _kept(checkpoints[step]))

    if start == 0:
        save_checkpoint(0)
    bar = tqdm(total=steps, initial=start, desc="dreambooth", file=sys.stderr, disable=not progress)
    last_save, last_step, write_s = time.monotonic(), start, 0.0
    timing = jobperf.loop("dreambooth", steps, start)
    for step in range(start + 1, steps + 1):
        record = trainer.train_step(step)
        records.append(record)
        timing.mark(step)  # train_step read its losses back: the GPU has caught up
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.4f}")
        save_checkpoint(step)
        since = time.monotonic() - last_save
        due = (step % max(resume_every, 1) == 0) if resume_every else (
            since >= resume_every_s or (step - last_step >= RESUME_EVERY_STEPS and write_s <= RESUME_MAX_OVERHEAD * since))
        if resume_path is not None and due and step < steps:
            t0 = time.monotonic()
            torch_save(trainer.resume_state(fingerprint, step, records), resume_path)
            last_save, last_step = time.monotonic(), step
            write_s = last_save - t0
    bar.close()
    backend.freeze()
    if resume_path is not None and resume_path.exists():
        resume_path.unlink()
    for p in checkpoints.values():
        _kept(p).unlink(missing_ok=True)
    return records


def _load_weights(backend: DiffusionBackend, weights: dict[str, torch.Tensor]) -> None:
    targets = dict(backend._finetuned_names())
    missing = set(targets) - set(weights)
    if missing or set(weights) - set(targets):
        raise DataError(f"resume state does not match the model being trained ({len(missing)} weights missing)")
    with torch.no_grad():
        for k, v in weights.items():
            targets[k].copy_(v)
