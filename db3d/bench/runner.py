"""Run the benchmark: load the config, build the backend per variant, time every row, write tables.

Timing: on CUDA, CUDA events around each timed call after `warmup` untimed calls, median of the
repeats (SDS rows: blocks of `sds_block` iterations, one occupancy-grid update period, after one
warm-up block); long rows (img2img, priors, eval, saves) by wall clock between synchronisations.
On CPU, `time.perf_counter`. Peak memory per row: `torch.cuda.max_memory_allocated` and
`max_memory_reserved` after a reset at the row's start (so they include the resident model); on
CPU the process's peak RSS so far.

Robustness: every row runs under its own try/except: a failing optimisation (compile error, OOM)
becomes a row with status `error`/`oom` and a one-line note, and the run goes on. The tables are
rewritten atomically after every row, and an interrupt (SIGINT, `timeout -s INT`) writes them with
status `interrupted` before exiting.
"""
from __future__ import annotations

import contextlib
import copy
import gc
import itertools
import json
import logging
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from .args import Options, Variant, parse_resolutions, variants_from_args
from .report import CONTEXT_GIB, GIB_24, Row, add_ratios, project, projection_lines, summary_lines, write_tables

log = logging.getLogger(__name__)


# ---- config ----------------------------------------------------------------------------------------

def _deep_merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


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
    """The config to benchmark: `config_json` (what a rule passes), or config/config.yaml with the
    file(s) `config` merged over it in order, as Snakemake merges `--configfile`s over the
    Snakefile's `configfile` (so `--config config/paper.yaml` alone is the paper setting); then the
    `--set` overrides; validated against the schema (skipped with a warning only when jsonschema is
    not installed). `seed` = the first of `seeds` unless set."""
    import yaml

    from ..config import apply_overrides, validate
    from ..errors import ConfigError

    overrides = dict(overrides or {})
    if config_json:
        cfg = json.loads(config_json)
        source = "config-json"
    else:
        cfg = {}
        paths = config_paths(config)
        for path in paths:
            if not path.exists():
                raise ConfigError(f"config file {path} does not exist; pass --config with an existing file")
            part = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
            if not isinstance(part, dict):
                raise ConfigError(f"{path}: expected a mapping at the top level")
            cfg = _deep_merge(cfg, part)
        source = " + ".join(map(str, paths))
    seed = overrides.pop("seed", cfg.pop("seed", None))
    cfg = apply_overrides(cfg, overrides)
    try:
        import jsonschema  # noqa: F401
    except ImportError:
        log.warning("jsonschema is not installed: the benchmark config is not validated")
    else:
        validate(cfg, source)
    cfg["seed"] = int(seed if seed is not None else (cfg.get("seeds") or [0])[0])
    return cfg


# ---- timing and memory -----------------------------------------------------------------------------

def cuda_index(device) -> int | None:
    """The CUDA device ordinal of `device` (torch.device("cuda") means the current one); None on CPU.
    Some torch.cuda functions (set_per_process_memory_fraction) refuse a device without an index."""
    import torch

    if device.type != "cuda":
        return None
    return device.index if device.index is not None else torch.cuda.current_device()


class Timer:
    def __init__(self, device):
        import torch

        self.torch = torch
        self.device = device
        self.cuda = device.type == "cuda"
        self.index = cuda_index(device)

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize(self.index)

    def events_ms(self, fn: Callable[[], Any]) -> float:
        """Milliseconds of `fn` (CUDA events on the current stream; perf_counter on CPU)."""
        if not self.cuda:
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3
        self.sync()
        start = self.torch.cuda.Event(enable_timing=True)
        end = self.torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))

    def wall_ms(self, fn: Callable[[], Any]) -> float:
        """Milliseconds of `fn` by the wall clock between device synchronisations (CPU work included)."""
        self.sync()
        t0 = time.perf_counter()
        fn()
        self.sync()
        return (time.perf_counter() - t0) * 1e3


class Memory:
    def __init__(self, device):
        import torch

        self.torch = torch
        self.device = device
        self.cuda = device.type == "cuda"
        self.index = cuda_index(device)

    def reset(self) -> None:
        gc.collect()
        if self.cuda:
            self.torch.cuda.empty_cache()
            self.torch.cuda.reset_peak_memory_stats(self.index)

    def read(self) -> tuple[float | None, float | None]:
        if self.cuda:
            return (self.torch.cuda.max_memory_allocated(self.index) / 2**30,
                    self.torch.cuda.max_memory_reserved(self.index) / 2**30)
        try:
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30, None
        except Exception:  # noqa: BLE001 - not on every platform
            return None, None


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _one_line(exc: BaseException, limit: int = 240) -> str:
    text = " ".join(str(exc).split())
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


# ---- variant options -------------------------------------------------------------------------------

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


# ---- the benchmark ---------------------------------------------------------------------------------

class Bench:
    """One benchmark run (all variants), writing its tables after every row."""

    def __init__(self, cfg: dict, variants: Sequence[Variant], out: Path, *, name: str | None = None,
                 sds_resolutions: Sequence[int] = (64, 128), repeats: int = 5, warmup: int = 2,
                 sds_block: int = 16, sds_repeats: int = 3, long_repeats: int = 1, time_budget: float = 0.0,
                 scratch: str | Path | None = None, command: str = "", config_label: str = "",
                 echo: Callable[[str], None] | None = None):
        self.cfg = cfg
        self.variants = list(variants)
        self.out = Path(out)
        self.name = name or self.out.stem
        res = int(cfg["nerf"]["render_resolution"])
        self.sds_res = [res] + [int(r) for r in sds_resolutions if int(r) != res]
        self.repeats, self.warmup = max(1, int(repeats)), max(0, int(warmup))
        self.sds_block, self.sds_repeats = max(1, int(sds_block)), max(1, int(sds_repeats))
        self.long_repeats = max(1, int(long_repeats))
        self.time_budget = float(time_budget or 0.0)
        self.scratch_root = Path(scratch) if scratch else None
        self.command, self.config_label = command, config_label
        self.echo = echo or (lambda s: print(s, flush=True))
        self.rows: list[Row] = []
        self.notes: list[str] = []
        self.meta: dict = {}
        self.backend = None
        self.backend_key: tuple | None = None
        self.compiled = False  # the running variant compiles something (more warm-up, noted per row)
        self.compiled_what = ""  # "compile" / "CUDA-graph capture" / both, for the notes
        self.train_compiled = False  # the UNet's calls with autograd are compiled too
        self.last_warmup_s = 0.0
        self.last_warmup_n = 0
        self.t0 = time.monotonic()

    # -- helpers ------------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def over_budget(self) -> bool:
        return self.time_budget > 0 and self.elapsed() > self.time_budget

    def write(self, status: str = "running") -> Path:
        add_ratios(self.rows)
        self.meta["status"] = status
        proj = self.projection()
        return write_tables(self.out, self.meta, self.rows, proj, self.notes)

    def projection(self) -> dict | None:
        if not any(r.variant == "base" and r.status == "ok" for r in self.rows):
            return None
        from ..dreambooth import RESUME_EVERY_S
        from ..stages import RESUME_EVERY

        return project(self.cfg, self.rows, "base", nerf_resume_every=int(RESUME_EVERY),
                       db_resume_every_s=RESUME_EVERY_S)

    def _drop_backend(self) -> None:
        self.backend = None
        self.backend_key = None
        gc.collect()
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()

    def _variant_cfg(self, opts: Options) -> dict:
        cfg = copy.deepcopy(self.cfg)
        if opts.precision:
            cfg["precision"] = opts.precision
        if opts.lora_rank is not None:
            cfg["dreambooth"]["lora_rank"] = int(opts.lora_rank)
        if opts.train_text_encoder is not None:
            cfg["dreambooth"]["train_text_encoder"] = bool(opts.train_text_encoder)
        return cfg

    def _backend_for(self, cfg: dict) -> float | None:
        """Make self.backend the backend `cfg` asks for; returns the build time (ms) if it built one."""
        from ..diffusion import build_backend

        lora = int(cfg["dreambooth"]["lora_rank"]) > 0
        key = (cfg["backend"], str(cfg["models"].get(cfg["backend"], cfg["models"].get("tiny_space"))),
               cfg["precision"])
        if self.backend is not None and self.backend_key == key and not lora:
            return None
        self._drop_backend()
        t0 = time.perf_counter()
        backend = build_backend(cfg)
        self.timer.sync()
        ms = (time.perf_counter() - t0) * 1e3
        self.backend = backend
        self.backend_key = None if lora else key  # LoRA adapters stay: never reuse that backend
        return ms

    def _record(self, row: Row, variant: Variant, precision: str) -> None:
        row.precision = row.precision or precision
        row.options = variant.options.describe()
        if self.device.type == "cuda" and row.peak_reserved_gib is not None and row.status == "ok":
            row.fits_24gib = "yes" if row.peak_reserved_gib + CONTEXT_GIB <= GIB_24 else "no"
        self.rows.append(row)
        line = summary_lines([row])[0]
        self.echo(f"[{self.elapsed():6.1f}s]{line}")
        self.write()

    def _run_row(self, variant: Variant, precision: str, row_name: str, fn: Callable[[], Any],
                 **fixed: Any) -> None:
        """Run one row (or a function returning several) with memory tracking and error capture."""
        if self.over_budget():
            self._record(Row(variant.name, row_name, status="skipped", note="time budget", **fixed), variant, precision)
            return
        self.memory.reset()
        results: list[dict] = []
        error: Row | None = None
        try:
            out = fn()
            results = out if isinstance(out, list) else [out]
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure becomes a row
            tb = traceback.format_exc(limit=6)
            self.echo(f"  ! {variant.name}/{row_name} failed:\n" + "\n".join("    " + l for l in tb.splitlines()[-8:]))
            error = Row(variant.name, row_name, status="oom" if _is_oom(exc) else "error", note=_one_line(exc), **fixed)
        finally:
            gc.collect()
        alloc, reserved = self.memory.read()
        if error is not None:
            error.peak_alloc_gib, error.peak_reserved_gib = alloc, reserved
            self._record(error, variant, precision)
            with contextlib.suppress(Exception):
                self.memory.reset()
            return
        for res in results:
            res = dict(res)
            name = res.pop("row", row_name)
            times = res.pop("times")
            kw = {**fixed, **res}
            row = Row.timed(variant.name, name, times, **kw)
            if name.endswith("_warmup"):  # a one-off cost, not a rate
                row.iters_per_s = None
            row.peak_alloc_gib, row.peak_reserved_gib = alloc, reserved
            self._record(row, variant, precision)

    # -- rows ---------------------------------------------------------------------------------------
    def _repeat(self, fn: Callable[[], Any], *, warmup: int | None = None, repeats: int | None = None,
                wall: bool = False) -> list[float]:
        """Timed repeats of `fn` after its warm-up calls (at least 3 when something is compiled: the
        first call compiles, CUDA graphs record on the next); the warm-up's wall time goes to
        `self.last_warmup_s`."""
        n = self.warmup if warmup is None else warmup
        if self.compiled:
            n = max(n, 3)
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        self.timer.sync()
        self.last_warmup_s = time.perf_counter() - t0
        self.last_warmup_n = n
        measure = self.timer.wall_ms if wall else self.timer.events_ms
        return [measure(fn) for _ in range(self.repeats if repeats is None else repeats)]

    def _warmup_what(self, train: bool = False) -> str:
        """What a row's warm-up pays for. Training calls run with autograd: CUDA graphs (direct or
        through torch.compile) never cover them, only `compile` (the UNet for every call) does."""
        if train:
            return "compile" if self.train_compiled else "eager: training is not captured"
        return self.compiled_what if self.compiled else "eager"

    def _warmup_note(self, train: bool = False) -> str:
        """`; warm-up N s (compile)` for compiled variants: the one-off cost a stage job pays too."""
        return f"; warm-up {self.last_warmup_s:.1f} s ({self._warmup_what(train)})" if self.compiled else ""

    def _warmup_row(self, row: str, n_calls: int, steady_ms: float | None, train: bool = False, **kw) -> dict:
        """`<row>_warmup`: what the warm-up calls before the timing took beyond `n_calls` x the
        steady time (compilation / CUDA-graph capture and first-call set-up: the one-off cost a
        stage job pays on its first calls); with `steady_ms` None, the warm-up's whole wall time."""
        wall = self.last_warmup_s * 1e3
        excess = wall if steady_ms is None else max(wall - n_calls * steady_ms, 0.0)
        what = (f"wall of the warm-up run ({n_calls} calls), an upper bound of its one-off cost" if steady_ms is None
                else f"{n_calls} warm-up calls took {wall / 1e3:.2f} s, {excess / 1e3:.2f} s more than {n_calls} "
                     f"steady ones")
        graphs = getattr(self.backend, "graph_stats", lambda: None)()
        return dict(row=f"{row}_warmup", times=[excess], unit="run",
                    note=what + f" ({self._warmup_what(train)})"
                         + (f"; CUDA graphs so far: {graphs}" if graphs and not train else ""), **kw)

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
            _release_training(self.backend)

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
            _release_training(self.backend)

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
            _release_training(self.backend)
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

    # -- main loop ----------------------------------------------------------------------------------
    def _variant(self, variant: Variant) -> None:
        cfg = self._variant_cfg(variant.options)
        prec = cfg["precision"]
        if self.over_budget():
            self._record(Row(variant.name, "variant", status="skipped", note="time budget"), variant, prec)
            return
        self.echo(f"== variant {variant.name}: {variant.options.describe()} rows={','.join(variant.rows)}")
        try:
            self.memory.reset()
            build_ms = self._backend_for(cfg)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001
            self._drop_backend()
            self._record(Row(variant.name, "backend_build", status="oom" if _is_oom(exc) else "error",
                             note=_one_line(exc)), variant, prec)
            return
        b = self.backend
        prec = {"torch.float16": "fp16", "torch.bfloat16": "bf16", "torch.float32": "fp32"}.get(str(b.dtype), str(b.dtype))
        if build_ms is not None and "build" in variant.rows:
            alloc, reserved = self.memory.read()
            counts = b.parameter_counts()
            self._record(Row.timed(variant.name, "backend_build", [build_ms], unit="run", peak_alloc_gib=alloc,
                                   peak_reserved_gib=reserved,
                                   note="random init (not a load): " + ", ".join(f"{k} {v / 1e6:.0f} M"
                                                                                 for k, v in counts.items())),
                         variant, prec)
        occ = variant.options.occgrid
        self.compiled = compiles(variant.options)
        self.compiled_what = compiled_what(variant.options)
        self.train_compiled = bool(variant.options.compile or variant.options.compile_vae)
        try:
            with applied(b, variant.options, self.device) as notes:
                self.notes.append(f"variant `{variant.name}`: " + "; ".join(notes))
                plan: list[tuple[str, str, Callable[[], Any], dict]] = []
                for key in variant.rows:
                    if key == "start":
                        plan.append((key, "process_start", lambda: self.row_start(cfg), {}))
                    elif key == "db":
                        plan.append((key, "dreambooth_step", lambda: self.row_db(cfg), {}))
                    elif key == "ref":
                        plan.append((key, "diffusers_dreambooth_step", lambda: self.row_ref(cfg), {}))
                    elif key == "save":
                        plan.append((key, "dreambooth_resume_save", lambda: self.row_saves(cfg, occ), {}))
                        plan.append((key, "nerf_resume_save", lambda: self.row_nerf_save(cfg, occ), {}))
                    elif key == "unet":
                        plan.append((key, "unet_cfg_b1", lambda: self.row_unet(cfg), {}))
                    elif key == "sds":
                        r0 = self.sds_res[0]
                        plan.append((key, "sds_step", lambda r=r0: self.row_sds(cfg, "stage1", r, occ), {"res": r0}))
                    elif key == "sds_res":
                        for r in self.sds_res[1:]:
                            plan.append((key, "sds_step", lambda r=r: self.row_sds(cfg, "stage1", r, occ), {"res": r}))
                    elif key == "sds3":
                        r0 = self.sds_res[0]
                        plan.append((key, "sds_step_stage3", lambda r=r0: self.row_sds(cfg, "stage3", r, occ),
                                     {"res": r0}))
                    elif key == "img2img":
                        plan.append((key, "img2img_views", lambda: self.row_img2img(cfg), {}))
                    elif key == "priors":
                        plan.append((key, "class_prior_batch", lambda: self.row_priors(cfg), {}))
                    elif key == "eval":
                        plan.append((key, "eval_run", lambda: self.row_eval(cfg), {}))
                for _key, name, fn, fixed in plan:
                    self._run_row(variant, prec, name, fn, **fixed)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - applying an option failed (e.g. compile)
            self._record(Row(variant.name, "variant", status="oom" if _is_oom(exc) else "error",
                             note="applying the options failed: " + _one_line(exc)), variant, prec)
        finally:
            if int(cfg["dreambooth"]["lora_rank"]) > 0:
                self._drop_backend()

    def run(self) -> list[Row]:
        import torch

        from ..diffusion.loading import resolve_device
        from ..io import seed_everything

        self.torch = torch
        base = self.variants[0].options
        # as every stage does first: seeds + deterministic kernels (CUBLAS workspace before CUDA starts)
        seed_everything(self.cfg["seed"], deterministic=base.deterministic)
        warnings.filterwarnings("ignore", message=".*does not have a deterministic implementation.*")
        warnings.filterwarnings("ignore", message=".*deterministic.*CuBLAS.*")
        self.device = resolve_device(self.cfg.get("device", "auto"))
        self.timer, self.memory = Timer(self.device), Memory(self.device)
        self.meta = self._environment()
        if self.scratch_root is not None:
            self.scratch_root.mkdir(parents=True, exist_ok=True)
        self.scratch = Path(tempfile.mkdtemp(prefix="db3d-bench-", dir=self.scratch_root))
        self.notes += _static_notes(self.cfg, self.device)
        status = "complete"
        try:
            self.write()
            for variant in self.variants:
                self._variant(variant)
            if self.over_budget():
                status = "time budget reached"
        except KeyboardInterrupt:
            status = "interrupted"
            self.echo("interrupted: writing what was measured")
            raise
        finally:
            self._drop_backend()
            shutil.rmtree(self.scratch, ignore_errors=True)
            md = self.write(status)
            self._print_summary(md)
        return self.rows

    def _print_summary(self, md: Path) -> None:
        self.echo(f"\n== {self.name}: {len(self.rows)} rows ({self.meta.get('status')}), "
                  f"{self.elapsed():.0f} s -> {self.out} + {md.name}")
        for line in summary_lines(self.rows):
            self.echo(line)
        proj = self.projection()
        if proj is not None:
            self.echo("\n== projection (variant base, this config's iteration counts)")
            for line in projection_lines(proj):
                self.echo(line)

    def _environment(self) -> dict:
        torch = self.torch
        cfg = self.cfg
        meta: dict[str, Any] = {"name": self.name, "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        if self.device.type == "cuda":
            props = torch.cuda.get_device_properties(cuda_index(self.device))
            meta["device"] = f"{props.name} ({props.total_memory / 2**30:.1f} GiB)"
            meta["cuda"] = f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"
        else:
            meta["device"] = f"CPU {platform.machine()} ({torch.get_num_threads()} threads)"
        meta["torch"] = torch.__version__
        try:
            import diffusers
            import transformers

            meta["diffusers"] = f"{diffusers.__version__} (transformers {transformers.__version__})"
        except Exception:  # noqa: BLE001
            pass
        meta["python"] = platform.python_version()
        backend = cfg["backend"]
        meta["backend"] = backend
        meta["model"] = cfg["models"].get(backend, "") if backend in ("sd", "if") else f"tiny-{cfg['models']['tiny_space']}"
        meta["precision"] = f"config {cfg['precision']}; per variant in the table (CPU always fp32)"
        meta["config"] = self.config_label
        try:
            from ..nerf.render import nerfacc_cuda_available

            meta["nerf_sampler"] = ("nerfacc CUDA ops loaded (occupancy grid)" if self.device.type == "cuda"
                                    and nerfacc_cuda_available() else "plain-PyTorch sampler (no nerfacc CUDA ops)")
        except Exception as exc:  # noqa: BLE001
            meta["nerf_sampler"] = f"unknown ({_one_line(exc, 80)})"
        meta["git"] = _git_describe()
        clock = "CUDA events" if self.device.type == "cuda" else "time.perf_counter"
        meta["timing"] = (f"{clock}; per-step rows: median of {self.repeats} after {self.warmup} warm-up calls (at least "
                          f"3 for compiled variants); SDS rows: "
                          f"median of {self.sds_repeats} blocks of {self.sds_block} iterations after one warm-up block; "
                          f"run rows: wall clock, {self.long_repeats} repeat(s) after a short warm-up")
        meta["command"] = self.command
        return meta


def _release_training(backend) -> None:
    """After a training row, also a failed one (OOM mid-step): no grads, trained weights back to the
    compute dtype, nothing requires grad, so the next rows see the inference-state backend."""
    for p in backend.parameters():
        p.grad = None
    backend.freeze()
    gc.collect()


def _prompt() -> str:
    from .workloads import PROMPT

    return PROMPT


def _static_notes(cfg: dict, device) -> list[str]:
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


def _git_describe() -> str:
    from ..config import REPO_ROOT

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return f"{head}{' (modified)' if dirty else ''}" if head else ""
    except Exception:  # noqa: BLE001 - a copy without .git
        return ""


# ---- entry points ----------------------------------------------------------------------------------

def run_bench(cfg: dict, out: str | Path, *, variants: Sequence[Variant] | None = None, **kw: Any) -> list[Row]:
    """Benchmark `cfg` (variants default: the base options on every row) and write `out` (+ .md)."""
    variants = list(variants) if variants else [Variant("base", Options())]
    if variants[0].name != "base":
        variants = [Variant("base", Options())] + variants
    return Bench(cfg, variants, Path(out), **kw).run()


def main(args) -> int:
    """`python -m db3d bench` (arguments: db3d.bench.args + --config/--set/--config-json)."""
    from ..config import parse_overrides
    from ..errors import ConfigError
    from ..stages import STAGE_COMPILE
    from .args import config_options

    overrides = parse_overrides(getattr(args, "set", None))
    cfg = load_bench_config(getattr(args, "config", None), overrides, getattr(args, "config_json", None))
    from ..devices import claim

    cfg = claim("bench", cfg)  # a GPU of its own on a multi-GPU host (db3d.devices), before CUDA starts
    try:
        # the base variant runs as the config's stages would: its deterministic / compile_unet
        variants = variants_from_args(args, config_options(cfg, STAGE_COMPILE))
        sds_res = parse_resolutions(args.sds_resolutions)
    except ValueError as exc:
        raise ConfigError(f"bench: {exc}") from None
    label = ("config-json" if getattr(args, "config_json", None)
             else " + ".join(str(p) for p in config_paths(getattr(args, "config", None))))
    if overrides:
        label += " " + " ".join(f"--set {k}={v}" for k, v in overrides.items())
    bench = Bench(cfg, variants, Path(args.out), name=args.name, sds_resolutions=sds_res, repeats=args.repeats,
                  warmup=args.warmup, sds_block=args.sds_block, sds_repeats=args.sds_repeats,
                  long_repeats=args.long_repeats, time_budget=args.time_budget, scratch=args.scratch,
                  command="python -m db3d " + " ".join(sys.argv[1:]) if sys.argv[0].endswith(("db3d", "__main__.py")) else "",
                  config_label=label)
    try:
        rows = bench.run()
    except KeyboardInterrupt:
        return 130
    return 0 if any(r.status == "ok" for r in rows) else 1
