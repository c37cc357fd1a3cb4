"""The benchmark's configuration: the config it benchmarks (through the one loader,
db3d.config.load_config), each variant's options applied to a backend, and the notes the tables
carry about the config.
"""
from __future__ import annotations

import contextlib
import logging
import subprocess
import warnings
from pathlib import Path
from typing import Any, Sequence

from .args import Options
from .probes import cuda_index
from .report import CONTEXT_GIB

log = logging.getLogger(__name__)


def config_paths(config: str | Path | Sequence[str | Path] | None) -> list[Path]:
    """config/config.yaml, then the given file(s) in order (duplicates of it dropped)."""
    from ..config import DEFAULT_CONFIG_PATH

    given = [] if config is None else [config] if isinstance(config, (str, Path)) else list(config)
    paths = [DEFAULT_CONFIG_PATH]
    for p in map(Path, given):
        if p.exists() and p.resolve() == DEFAULT_CONFIG_PATH.resolve():
            continue
        paths.append(p)
    return paths


def load_bench_config(config: str | Path | Sequence[str | Path] | None = None,
                      overrides: dict[str, str] | None = None, config_json: str | None = None) -> dict:
    """The config to benchmark, through the one loader (db3d.config.load_config): `config_json`
    (what a rule passes), or config/config.yaml with the file(s) `config` merged over it in order,
    as Snakemake merges `--configfile`s over the Snakefile's `configfile` (so `--config
    config/paper.yaml` alone is the paper setting); then the `--set` overrides; validated.
    `seed` = the first of `seeds` unless set."""
    from ..config import load_config

    if config_json:
        return load_config(overrides=overrides, json_text=config_json)
    return load_config(config_paths(config), overrides)


def _attn_names(module) -> str:
    procs = getattr(module, "attn_processors", None)
    if not procs:
        return "-"
    return ",".join(sorted({type(p).__name__ for p in procs.values()}))


@contextlib.contextmanager
def applied(backend, opts: Options, device) -> Any:
    """Apply the reversible options of a variant to the process and the backend; undo them after."""
    import torch

    notes: list[str] = []
    with contextlib.ExitStack() as stack:
        prev_det = torch.are_deterministic_algorithms_enabled()
        prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
        torch.use_deterministic_algorithms(opts.deterministic, warn_only=True)
        stack.callback(torch.use_deterministic_algorithms, prev_det, warn_only=prev_warn)
        if device.type == "cuda":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                prev_tf32 = torch.backends.cuda.matmul.allow_tf32
                torch.backends.cuda.matmul.allow_tf32 = bool(opts.tf32)

            def _restore_tf32(v=prev_tf32):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    torch.backends.cuda.matmul.allow_tf32 = v
            stack.callback(_restore_tf32)
            prev_bench = torch.backends.cudnn.benchmark
            torch.backends.cudnn.benchmark = bool(opts.cudnn_benchmark)
            stack.callback(setattr, torch.backends.cudnn, "benchmark", prev_bench)
            if opts.memlimit > 0:
                index = cuda_index(device)
                torch.cuda.empty_cache()
                total = torch.cuda.get_device_properties(index).total_memory
                frac = float(min(1.0, max(0.01, (opts.memlimit - CONTEXT_GIB) * 2**30 / total)))
                torch.cuda.set_per_process_memory_fraction(frac, index)
                stack.callback(torch.cuda.set_per_process_memory_fraction, 1.0, index)
                notes.append(f"allocator capped at {frac * total / 2**30:.2f} GiB "
                             f"({opts.memlimit:g} GiB card less {CONTEXT_GIB} GiB context)")
        elif opts.memlimit > 0 or opts.tf32 or opts.cudnn_benchmark:
            notes.append("memlimit/tf32/cudnn_benchmark have no effect on CPU")
        modules = [m for m in (backend.unet, backend.vae) if m is not None]
        if opts.channels_last:
            for m in modules:
                m.to(memory_format=torch.channels_last)
                stack.callback(m.to, memory_format=torch.contiguous_format)
        if opts.attention == "classic":
            for m in modules:
                if hasattr(m, "set_default_attn_processor") and getattr(m, "attn_processors", None):
                    saved = dict(m.attn_processors)
                    m.set_default_attn_processor()
                    stack.callback(m.set_attn_processor, saved)
        if opts.vae_attention and backend.vae is not None:
            saved_vae = dict(backend.vae.attn_processors)
            backend.set_vae_attention(opts.vae_attention)
            stack.callback(backend.vae.set_attn_processor, saved_vae)
        if opts.vae_autocast is not None:
            stack.callback(setattr, backend, "vae_autocast", backend.vae_autocast)
            backend.vae_autocast = opts.vae_autocast
        notes.append(f"attention: unet {_attn_names(backend.unet)}"
                     + (f", vae {_attn_names(backend.vae)}" if backend.vae is not None else "")
                     + ("" if backend.vae is None else "; VAE under autocast" if backend.vae_autocast
                        else "; VAE in its own dtype (no autocast)"))
        if opts.grad_ckpt:
            backend.gradient_checkpointing(True)
            stack.callback(backend.gradient_checkpointing, False)
        if compiles(opts):
            # what stages._backend does for compile_unet (DiffusionBackend.compile_models)
            notes += backend.compile_models(opts.compile or None, cudagraphs=opts.cudagraphs or False,
                                            vae_encoder=opts.compile_vae)

            def _uncompile():
                backend.uncompile_models()
                with contextlib.suppress(Exception):
                    torch._dynamo.reset()
            stack.callback(_uncompile)
        yield notes


def compiles(opts: Options) -> bool:
    return bool(opts.compile or opts.cudagraphs or opts.compile_vae)


def compiled_what(opts: Options) -> str:
    """What a variant's warm-up pays for: torch.compile and/or direct CUDA-graph capture."""
    parts = []
    if opts.compile or opts.compile_vae or opts.cudagraphs == "compile":
        parts.append("compile")
    if opts.cudagraphs == "direct":
        parts.append("CUDA-graph capture")
    return " + ".join(parts)


def static_notes(cfg: dict, device) -> list[str]:
    notes = []
    if cfg["backend"] in ("sd", "if") and str(cfg["models"].get(cfg["backend"])) == "random":
        notes.append("models.%s = random: full-size architecture with random weights; a step costs what it costs "
                     "with the real weights, but load times are not measured" % cfg["backend"])
    if cfg["backend"] == "tiny":
        notes.append("tiny backend: plumbing only, the numbers say nothing about the real models")
    notes.append("peak memory: torch.cuda.max_memory_allocated / max_memory_reserved since the row started (the "
                 "resident model included); on CPU the process's peak RSS so far")
    notes.append(f"fits_24gib: peak reserved + {CONTEXT_GIB} GiB (CUDA context) <= 24 GiB; the authoritative check is "
                 "a variant with memlimit=24, which caps the allocator so that an overflow is an OOM row")
    notes.append("projection: rows of variant base x the config's counts, plus each stage job's start-up once "
                 "(process_start, the model build: backend_build / eval_models_build, random init standing in for the "
                 "load from disk, and the *_warmup rows: compilation or CUDA-graph capture and first-call set-up); "
                 "excludes the stage turntables and the baselines (naive, latent_nerf)")
    if device.type != "cuda":
        notes.append("CPU run: no occupancy grid (nerfacc's CUDA ops), compute in fp32")
    return notes


def git_describe() -> str:
    from ..config import REPO_ROOT

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return f"{head}{' (modified)' if dirty else ''}" if head else ""
    except Exception:  # noqa: BLE001 - a copy without .git
        return ""
