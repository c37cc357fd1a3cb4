"""Command-line arguments of `python -m db3d bench` and the variant mini-language (no torch here).

A *variant* is a named set of options applied on top of the base options (the command-line flags),
timed on a subset of the rows, so one run can A/B optimisations:

    --variant "bf16 precision=bf16"
    --variant "chlast channels_last=1 rows=unet,sds"
    --variant "mem24 memlimit=24 rows=db,sds,img2img,eval"

The first token is the name (unless it holds a `=`); `key=value` sets an option (a bare `key`
means `key=1`); `rows=` picks the rows (default `--variant-rows`). The base variant (named
`base`) always runs first, on `--rows`.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields, replace
from typing import Any, Sequence

# Row keys in execution order. db/ref run before the inference rows so that, with LoRA, the SDS and
# img2img rows run through the adapted UNet as the pipeline's later stages do; the (slow, disk-bound)
# saves run last.
ROW_KEYS = ("start", "build", "db", "ref", "unet", "sds", "sds_res", "sds3", "img2img", "priors", "eval", "save")
ROW_HELP = {
    "start": "a stage job's process start: fresh python, imports, CUDA context",
    "build": "backend construction (random weights: not a load time)",
    "db": "our DreamBooth step (dreambooth.train's loop body)",
    "ref": "diffusers' train_dreambooth.py step on the same model and batch",
    "save": "resume-state and checkpoint writes of DreamBooth and fit_nerf",
    "unet": "bare UNet forward with CFG at batch 1 (the floor of an SDS step)",
    "sds": "one fit_nerf iteration (stage1) at nerf.render_resolution",
    "sds_res": "the same at the other --sds-resolutions",
    "sds3": "one stage3 iteration (SDS + reconstruction render) at nerf.render_resolution",
    "img2img": "stage 2: render + img2img of stage2.num_views views",
    "priors": "one batch of 4 class-prior images at dreambooth.class_sample_steps",
    "eval": "evaluation of one run: turntable renders + every CLIP of models.clip + GIF",
}
OCCGRID = ("on", "off", "dense")
ATTENTION = ("default", "classic")
COMPILE_MODES = ("", "default", "reduce-overhead", "max-autotune")
PRECISIONS = ("", "fp32", "fp16", "bf16")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


@dataclass(frozen=True)
class Options:
    """What a variant changes. None / "" = take it from the config (precision, LoRA, text encoder)."""

    precision: str = ""             # fp32 | fp16 | bf16 ("" = config `precision`)
    channels_last: bool = False     # UNet + VAE in channels_last memory format
    attention: str = "default"      # default (diffusers' choice: SDPA processors) | classic (AttnProcessor)
    compile: str = ""               # "" off | default | reduce-overhead (CUDA graphs) | max-autotune: the UNet
    cudagraphs: str = ""            # UNet calls without autograd (SDS, sampling) as CUDA graphs: "" off |
                                    # direct (torch.cuda.CUDAGraph) | compile (torch.compile reduce-overhead)
    compile_vae: bool = False       # torch.compile the VAE encoder (SDS encodes every render through it)
    vae_attention: str = ""         # "" = the backend's | sdpa (AttnProcessor2_0) | classic (AttnProcessor)
    vae_autocast: bool | None = None  # None = the backend's | True: VAE calls under autocast | False: in its dtype
    tf32: bool = False              # torch.backends.cuda.matmul.allow_tf32 (cuDNN keeps torch's default)
    cudnn_benchmark: bool = False   # torch.backends.cudnn.benchmark: cuDNN times its conv algorithms per shape
    occgrid: str = "on"             # on (fit_nerf: nerfacc grid skipping) | off (marching, no skipping) | dense
    deterministic: bool = True      # torch.use_deterministic_algorithms as every stage sets it
    grad_ckpt: bool = False         # UNet gradient checkpointing in DreamBooth
    lora_rank: int | None = None    # None = config dreambooth.lora_rank
    train_text_encoder: bool | None = None  # None = config dreambooth.train_text_encoder
    memlimit: float = 0.0           # GiB: cap the caching allocator to this card size (0 = no cap)

    def describe(self) -> str:
        """`key=value` for every option that differs from the default."""
        default = Options()
        parts = []
        for f in fields(self):
            v = getattr(self, f.name)
            if v != getattr(default, f.name):
                parts.append(f"{f.name}={_fmt(v)}")
        return " ".join(parts) or "defaults"


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    return str(v)


def _parse_bool(key: str, value: str) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ValueError(f"{key}={value!r}: expected 0/1")


def coerce_option(key: str, value: str) -> Any:
    """A string `value` for option `key`, typed and checked."""
    names = {f.name for f in fields(Options)}
    if key not in names:
        raise ValueError(f"unknown option {key!r}; known: {', '.join(sorted(names))}, rows")
    if key in ("channels_last", "tf32", "deterministic", "grad_ckpt", "compile_vae", "cudnn_benchmark"):
        return _parse_bool(key, value)
    if key == "cudagraphs":  # 1 = direct (what compile_unet does), compile = torch.compile reduce-overhead
        from ..diffusion.compiling import cudagraph_mode  # the one parser of this setting (compile_models' too)

        return cudagraph_mode(value)
    if key in ("train_text_encoder", "vae_autocast"):
        return _parse_bool(key, value)
    if key == "lora_rank":
        n = int(value)
        if n < 0:
            raise ValueError(f"lora_rank={value}: expected >= 0")
        return n
    if key == "memlimit":
        x = float(value)
        if x < 0:
            raise ValueError(f"memlimit={value}: expected GiB >= 0")
        return x
    if key == "compile":
        v = value.strip().lower()
        v = "default" if v in _TRUE else ("" if v in _FALSE else v)
        if v not in COMPILE_MODES:
            raise ValueError(f"compile={value!r}: expected 0, 1 or one of {', '.join(COMPILE_MODES[1:])}")
        return v
    choices = {"precision": PRECISIONS, "attention": ATTENTION, "occgrid": OCCGRID,
               "vae_attention": ("", "sdpa", "classic")}[key]
    v = value.strip().lower()
    if v not in choices:
        raise ValueError(f"{key}={value!r}: expected one of {', '.join(c for c in choices if c)}")
    return v


def parse_rows(text: str) -> tuple[str, ...]:
    """`all` or a comma list of ROW_KEYS -> those keys in execution order."""
    keys = [k.strip() for k in str(text).split(",") if k.strip()]
    if not keys or keys == ["all"]:
        return ROW_KEYS
    bad = [k for k in keys if k not in ROW_KEYS]
    if bad:
        raise ValueError(f"unknown row(s) {', '.join(bad)}; known: all, {', '.join(ROW_KEYS)}")
    return tuple(k for k in ROW_KEYS if k in keys)


@dataclass(frozen=True)
class Variant:
    name: str
    options: Options
    rows: tuple[str, ...] = field(default=ROW_KEYS)


def parse_variant(spec: str, base: Options, default_rows: Sequence[str]) -> Variant:
    """`"name key=value ... rows=a,b"` -> Variant (options on top of `base`)."""
    tokens = str(spec).split()
    if not tokens:
        raise ValueError("empty --variant")
    name = tokens[0] if "=" not in tokens[0] else "+".join(tokens)
    if "=" not in tokens[0]:
        tokens = tokens[1:]
    changes: dict[str, Any] = {}
    rows = tuple(default_rows)
    for tok in tokens:
        key, _, value = tok.partition("=")
        if not _:
            value = "1"
        if key == "rows":
            rows = parse_rows(value)
        else:
            changes[key] = coerce_option(key, value)
    if changes.get("compile", None) == "":  # compile=0: nothing compiled (unless the variant says so)
        changes.setdefault("cudagraphs", "")
        changes.setdefault("compile_vae", False)
    if not name.replace("_", "").replace("-", "").replace("+", "").replace("=", "").replace(".", "").isalnum():
        raise ValueError(f"variant name {name!r}: use letters, digits, _ - . only")
    return Variant(name=name, options=replace(base, **changes), rows=rows)


def config_options(cfg: dict, stage_compile: dict | None = None) -> dict[str, Any]:
    """The options a config itself sets, as the stages apply them: `deterministic` (torch's
    deterministic kernels) and `compile_unet` (`stage_compile`: stages.STAGE_COMPILE, what
    `compile_unet: true` compiles). The bench's base variant starts from these."""
    out: dict[str, Any] = {"deterministic": bool(cfg["deterministic"])}
    if cfg.get("compile_unet") and stage_compile:
        out.update(compile=coerce_option("compile", stage_compile.get("unet_mode") or "0"),
                   cudagraphs=coerce_option("cudagraphs", str(stage_compile.get("cudagraphs") or "0")),
                   compile_vae=bool(stage_compile.get("vae_encoder")))
    return out


def base_options(args: argparse.Namespace, defaults: dict[str, Any] | None = None) -> Options:
    """The base options: `defaults` (the config's own, `config_options`), then the command-line flags."""
    base = Options(**(defaults or {}))
    changes: dict[str, Any] = dict(
        precision=coerce_option("precision", args.precision or ""),
        channels_last=bool(args.channels_last), attention=args.attention, tf32=bool(args.tf32), occgrid=args.occgrid,
        grad_ckpt=bool(args.grad_ckpt), lora_rank=args.lora_rank,
        train_text_encoder=(None if args.train_text_encoder is None
                            else _parse_bool("train_text_encoder", args.train_text_encoder)),
        memlimit=float(args.memory_limit_gib or 0.0))
    if args.no_deterministic:
        changes["deterministic"] = False
    if getattr(args, "compile", None) is not None:
        changes["compile"] = coerce_option("compile", args.compile)
        if not changes["compile"]:  # --compile 0: nothing compiled
            changes.update(cudagraphs="", compile_vae=False)
    if getattr(args, "cudagraphs", None):
        changes["cudagraphs"] = coerce_option("cudagraphs", str(args.cudagraphs))
    if getattr(args, "compile_vae", False):
        changes["compile_vae"] = True
    return replace(base, **changes)


def variants_from_args(args: argparse.Namespace, defaults: dict[str, Any] | None = None) -> list[Variant]:
    """[base, *--variant] with the base on --rows and the others on --variant-rows by default.
    `defaults`: the config's own options (`config_options`), under the flags."""
    base = base_options(args, defaults)
    out = [Variant("base", base, parse_rows(args.rows))]
    default_rows = parse_rows(args.variant_rows)
    for spec in args.variant or []:
        v = parse_variant(spec, base, default_rows)
        if any(v.name == o.name for o in out):
            raise ValueError(f"variant name {v.name!r} used twice")
        out.append(v)
    return out


def parse_resolutions(text: str) -> list[int]:
    vals = [int(x) for x in str(text).split(",") if x.strip()]
    if not vals or min(vals) < 4:
        raise ValueError(f"--sds-resolutions {text!r}: expected a comma list of integers >= 4")
    return vals


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The bench's own arguments (the config ones, --config/--set/--config-json, come from cli.py)."""
    p.add_argument("--out", required=True, help="table to write: reports/bench/<name>.tsv (+ <name>.md beside it)")
    p.add_argument("--name", default=None, help="label in the Markdown header (default: the --out stem)")
    p.add_argument("--rows", default="all", help=f"rows of the base variant: all or a comma list of {', '.join(ROW_KEYS)}")
    p.add_argument("--variant", action="append", metavar="SPEC",
                   help='extra variant, e.g. "bf16 precision=bf16" or "nogrid occgrid=off rows=sds" (repeatable)')
    p.add_argument("--variant-rows", default="unet,sds,db,ref", help="default rows of extra variants")
    p.add_argument("--sds-resolutions", default="64,128",
                   help="render resolutions of the SDS rows (nerf.render_resolution is always one)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats of per-step rows (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls before the per-step rows")
    p.add_argument("--sds-block", type=int, default=16,
                   help="NeRF iterations per timed block (16 = one occupancy-grid update period)")
    p.add_argument("--sds-repeats", type=int, default=3, help="timed blocks of the SDS rows (after one warm-up block)")
    p.add_argument("--long-repeats", type=int, default=1, help="timed repeats of img2img / priors / eval / saves")
    p.add_argument("--time-budget", type=float, default=0.0,
                   help="seconds; rows that would start after it are reported as skipped (0 = no limit)")
    p.add_argument("--scratch", default=None, help="folder for the files the save/img2img/eval rows write (default: temp)")
    g = p.add_argument_group("base options (what every variant starts from)")
    g.add_argument("--precision", choices=PRECISIONS[1:], default=None, help="override config precision")
    g.add_argument("--channels-last", action="store_true", help="UNet and VAE in channels_last")
    g.add_argument("--attention", choices=ATTENTION, default="default",
                   help="default: diffusers' processors (SDPA); classic: AttnProcessor (no SDPA)")
    g.add_argument("--compile", nargs="?", const="default", default=None,
                   help="torch.compile the UNet (optional mode: default, reduce-overhead, max-autotune; 0: "
                        "nothing compiled; default: as the config's compile_unet says)")
    g.add_argument("--cudagraphs", nargs="?", const="direct", default=None, choices=("direct", "compile"),
                   help="UNet calls without autograd (SDS, sampling) as CUDA graphs: direct (torch.cuda.CUDAGraph, "
                        "the default) or compile (torch.compile reduce-overhead)")
    g.add_argument("--compile-vae", action="store_true", help="torch.compile the VAE encoder")
    g.add_argument("--tf32", action="store_true", help="torch.backends.cuda.matmul.allow_tf32 = True")
    g.add_argument("--occgrid", choices=OCCGRID, default="on",
                   help="NeRF sampler: on = occupancy-grid skipping (fit_nerf), off = no skipping, dense = torch sampler")
    g.add_argument("--no-deterministic", action="store_true",
                   help="turn off torch's deterministic kernels (default: as the config's `deterministic` says)")
    g.add_argument("--grad-ckpt", action="store_true", help="UNet gradient checkpointing in DreamBooth")
    g.add_argument("--lora-rank", type=int, default=None, help="override dreambooth.lora_rank")
    g.add_argument("--train-text-encoder", default=None, metavar="0|1", help="override dreambooth.train_text_encoder")
    g.add_argument("--memory-limit-gib", type=float, default=0.0,
                   help="cap the CUDA caching allocator as on a card of this size (e.g. 24); 0 = no cap")
    return p
