"""The workflow configuration: one YAML file, one JSON schema, one place to read both.

The Snakefile checks its config (config files + `--config`) with `check_snakemake_config`: the
strings Snakemake's `--config` leaves inside lists and mappings are parsed into the schema's types
(`coerce_to_schema`), then `validate` against `config/schema.yaml`; every `python -m db3d` command
reads the resolved per-run config through `load_config`, which validates again, so a bad value is
caught with the same one-line message whichever way the code is entered.

A *setting* names one cell of an experiment: `seed~0`, or an ablation row such as
`partial_steps~50/seed~1` (the directory layout `snakemake.utils.Paramspace` produces).
Each `name~value` overrides one config key; `ABLATION_KEYS` maps the short column names used in
`ablations/*.tsv` to config keys, and any key can also be written `section__key`.
"""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = REPO_ROOT / "config" / "schema.yaml"
DEFAULT_CONFIG_PATH = REPO_ROOT / "config" / "config.yaml"

# Short names for the knobs the paper's ablations turn (columns of ablations/*.tsv).
ABLATION_KEYS = {
    "seed": "seed",
    "partial_steps": "dreambooth.partial_steps",
    "full_steps": "dreambooth.full_steps",
    "multiview_steps": "dreambooth.multiview_steps",
    "recon_weight": "stage3.recon_weight",
    "noise_level": "stage2.noise_level",
    "num_pseudo_views": "stage2.num_views",
    "guidance_scale": "sds.guidance_scale",
    "stage1_iters": "stage1.iters",
    "stage3_iters": "stage3.iters",
}


def load_schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def validate(cfg: dict, source: str = "config") -> dict:
    """Validate `cfg` against the schema; raise ConfigError naming the key, the value and the rule
    in one line (the first error by key; an unknown key with the known key it is closest to)."""
    import difflib

    import jsonschema

    schema = load_schema()
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        key = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        message = " ".join(err.message.split())
        if err.validator == "additionalProperties":
            known = list(err.schema.get("properties", {}))
            extra = sorted(set(err.instance) - set(known)) if isinstance(err.instance, dict) else []
            message = f"unknown key(s) {', '.join(map(repr, extra))}"
            close = difflib.get_close_matches(str(extra[0]), known, n=1) if extra else []
            message += f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(known)})"
        if len(message) > 300:
            message = message[:297] + "..."
        raise ConfigError(f"{source}: {key}: {message}; fix it in the config file or --config "
                          "(schema: config/schema.yaml)")
    from .variants import VARIANTS  # the variant names are declared there, not in the schema

    unknown = [v for v in cfg.get("variants", []) if v not in VARIANTS]
    if unknown:
        raise ConfigError(f"{source}: variants: unknown {', '.join(unknown)} (known: {', '.join(VARIANTS)}); "
                          "fix `variants` in the config")
    if "backend" in cfg:
        from .diffusion.registry import find  # the backend names are the registry's, not the schema's

        find(cfg["backend"])  # an unknown one: one line naming the known ones
    return cfg


def coerce_to_schema(value: Any, schema: dict | None = None, root: dict | None = None) -> Any:
    """`value` with strings parsed into the numbers and booleans the schema asks for, recursively.

    Why: Snakemake parses `--config` values with YAML's BaseLoader inside lists and mappings, so
    `--config 'seeds=[0,1,2]'` arrives as ["0", "1", "2"] (and `dataset={"min_images": 4}` as
    "4"). A string that does not parse as the asked type is left as it is, for `validate` to name.
    """
    root = load_schema() if root is None else root
    schema = root if schema is None else schema
    if "$ref" in schema:  # only local refs: "#/definitions/name"
        node: Any = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        return coerce_to_schema(value, node, root)
    for combinator in ("oneOf", "anyOf"):
        if combinator in schema:
            import jsonschema

            for option in schema[combinator]:
                candidate = coerce_to_schema(value, option, root)
                if jsonschema.Draft202012Validator(dict(option, definitions=root.get("definitions", {}))).is_valid(candidate):
                    return candidate
            return value
    kind = schema.get("type")
    if isinstance(value, dict) and kind == "object":
        props = schema.get("properties", {})
        return {k: coerce_to_schema(v, props[k], root) if k in props else v for k, v in value.items()}
    if isinstance(value, list) and kind == "array" and isinstance(schema.get("items"), dict):
        return [coerce_to_schema(v, schema["items"], root) for v in value]
    if isinstance(value, str) and kind == "boolean":
        word = value.strip().lower()
        return word == "true" if word in ("true", "false") else value
    if isinstance(value, str) and kind in ("integer", "number"):
        try:
            return int(value)
        except ValueError:
            pass
        try:
            number = float(value)
        except ValueError:
            return value
        if not math.isfinite(number):
            return value
        return int(number) if kind == "integer" and number.is_integer() else number
    if isinstance(value, (int, float)) and not isinstance(value, bool) and kind == "string":
        return str(value)  # `--config device=0`-style: a top-level number where a name is asked for
    return value


def check_snakemake_config(config: dict) -> None:
    """The Snakefile's config check: coerce `--config` strings by the schema (in place), validate,
    and stop the run with one line (`db3d: error: ...`, exit 1) on a bad value."""
    coerced = coerce_to_schema(config)
    config.clear()
    config.update(coerced)
    try:
        validate(config, "config")
    except ConfigError as e:
        raise SystemExit(f"db3d: error: {e}") from None


def parse_seed(value: Any, where: str = "seed") -> int:
    """A seed from the command line or a setting (`seed~1`): a non-negative integer, else one line."""
    try:
        seed = coerce_to_schema(value, {"type": "integer"})
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError
    except ValueError:
        raise ConfigError(f"{where}={value!r}: a seed is a non-negative integer, e.g. --set seed=1") from None
    return seed


def load_config(path: str | Path | list | tuple | None = None, overrides: dict[str, Any] | None = None,
                *, json_text: str | None = None) -> dict:
    """Read YAML/JSON config file(s), apply dotted-key overrides, validate, and return the result:
    the one loader (the commands, the benchmark and the toy prior's defaults all go through it).

    Several files merge in order, later keys winning, as Snakemake merges `--configfile`s: so
    `[config/config.yaml, config/paper.yaml]` is the paper setting from the command line too.
    `json_text`: a whole config as JSON instead of files (the benchmark's --config-json).
    """
    cfg: dict = {}
    if json_text is not None:
        part = json.loads(json_text)
        if not isinstance(part, dict):
            raise ConfigError("--config-json: expected a mapping at the top level")
        merge_into(cfg, part)
        path = "config-json"
    else:
        paths = [DEFAULT_CONFIG_PATH] if path is None else [path] if isinstance(path, (str, Path)) else list(path)
        for p in map(Path, paths):
            if not p.exists():
                raise ConfigError(f"config file {p} does not exist; pass --config with an existing file")
            text = p.read_text()
            part = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
            if not isinstance(part, dict):
                raise ConfigError(f"{p}: expected a mapping at the top level")
            merge_into(cfg, part)
        path = " + ".join(map(str, paths))
    seed = cfg.pop("seed", None)
    cfg = apply_overrides(cfg, overrides or {})
    seed = (overrides or {}).get("seed", seed)
    validate(cfg, str(path))
    cfg["seed"] = parse_seed(seed) if seed is not None else default_seed(cfg)
    return cfg


def default_seed(cfg: dict) -> int:
    """The seed of a run that names none: the first of the config's `seeds` (schema-required)."""
    return int(cfg["seeds"][0])


def merge_into(base: dict, update: dict) -> dict:
    """Recursively update `base` with `update` (mappings merge, everything else replaces)."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge_into(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def apply_overrides(cfg: dict, overrides: dict[str, Any]) -> dict:
    """Return a copy of `cfg` with each `a.b.c: value` override set; unknown keys are errors."""
    cfg = copy.deepcopy(cfg)
    for key, value in overrides.items():
        if key == "seed":
            continue
        dotted = resolve_key(key)
        node = cfg
        parts = dotted.split(".")
        for part in parts[:-1]:
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"unknown config key {key!r}; known ablation columns: {', '.join(ABLATION_KEYS)}")
            node = node[part]
        if parts[-1] not in node:
            raise ConfigError(f"unknown config key {key!r}; known ablation columns: {', '.join(ABLATION_KEYS)}")
        node[parts[-1]] = coerce_like(node[parts[-1]], value, key)
    return cfg


def resolve_key(key: str) -> str:
    return ABLATION_KEYS.get(key, key.replace("__", "."))


def coerce_like(current: Any, value: Any, key: str) -> Any:
    """Parse a string override into the type of the value it replaces."""
    if not isinstance(value, str):
        return value
    try:
        if isinstance(current, bool):
            if value.lower() not in ("true", "false"):
                raise ValueError
            return value.lower() == "true"
        if isinstance(current, int):
            f = float(value)
            return int(f) if f.is_integer() else f
        if isinstance(current, float):
            return float(value)
        if isinstance(current, (list, dict)):
            return yaml.safe_load(value)
    except ValueError:
        raise ConfigError(f"override {key}={value!r}: expected a {type(current).__name__}") from None
    return value


def parse_overrides(items: list[str] | tuple[str, ...] | None) -> dict[str, str]:
    """`--set` arguments (`["stage1.iters=300", ...]`) -> {"stage1.iters": "300", ...}."""
    out: dict[str, str] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set stage1.iters=300")
        out[key.strip()] = value
    return out


def parse_setting(setting: str) -> dict[str, str]:
    """`partial_steps~50/seed~1` -> {"partial_steps": "50", "seed": "1"}."""
    out: dict[str, str] = {}
    for part in setting.strip("/").split("/"):
        if "~" not in part:
            raise ConfigError(f"setting {setting!r}: segment {part!r} is not name~value")
        name, value = part.split("~", 1)
        out[name] = value
    return out


def format_setting(params: dict[str, Any]) -> str:
    """Inverse of parse_setting (keys keep their order, seed last as Paramspace tables put it)."""
    items = [(k, v) for k, v in params.items() if k != "seed"]
    if "seed" in params:
        items.append(("seed", params["seed"]))
    return "/".join(f"{k}~{v}" for k, v in items)


def setting_config(base: dict, setting: str, check: bool = True) -> dict:
    """The fully resolved config of one experiment cell (base config + the setting's overrides).

    `check=False` skips the schema: for cells already validated (the Snakefile validates the base
    and every ablation cell once while it plans, then resolves cells thousands of times)."""
    overrides = parse_setting(setting)
    cfg = apply_overrides({k: v for k, v in base.items() if k != "seed"}, overrides)
    if check:
        validate(cfg, f"setting {setting}")
    cfg["seed"] = parse_seed(overrides["seed"], f"setting {setting}: seed") if "seed" in overrides else default_seed(base)
    return cfg
