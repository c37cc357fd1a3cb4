"""Run the benchmark: build the backend per variant, time every row, write tables (the config and the
variants' options: db3d.bench.configuration; the rows: db3d.bench.rows; timers and memory: db3d.bench.probes).

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
import logging
import platform
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from .args import Options, Variant, parse_resolutions, variants_from_args
from .configuration import (applied, compiled_what, compiles, config_paths, git_describe,  # noqa: F401
                            load_bench_config, static_notes)
from .probes import Memory, Timer, _is_oom, _one_line, cuda_index  # noqa: F401
from .rows import Rows
from .report import CONTEXT_GIB, GIB_24, Row, add_ratios, project, projection_lines, summary_lines, write_tables

log = logging.getLogger(__name__)


# ---- the benchmark ---------------------------------------------------------------------------------

class Bench(Rows):
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
        self.device = resolve_device(self.cfg["device"])
        self.timer, self.memory = Timer(self.device), Memory(self.device)
        self.meta = self._environment()
        if self.scratch_root is not None:
            self.scratch_root.mkdir(parents=True, exist_ok=True)
        self.scratch = Path(tempfile.mkdtemp(prefix="db3d-bench-", dir=self.scratch_root))
        self.notes += static_notes(self.cfg, self.device)
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
        meta["git"] = git_describe()
        clock = "CUDA events" if self.device.type == "cuda" else "time.perf_counter"
        meta["timing"] = (f"{clock}; per-step rows: median of {self.repeats} after {self.warmup} warm-up calls (at least "
                          f"3 for compiled variants); SDS rows: "
                          f"median of {self.sds_repeats} blocks of {self.sds_block} iterations after one warm-up block; "
                          f"run rows: wall clock, {self.long_repeats} repeat(s) after a short warm-up")
        meta["command"] = self.command
        return meta


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
