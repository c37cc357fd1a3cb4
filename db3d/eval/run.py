"""`python -m db3d evaluate`: fixed-camera renders of one NeRF and its CLIP metrics.

Output, in `out_dir` (each file atomic):
- `metrics.tsv`: tidy long table, one row per (metric, CLIP model), columns `METRIC_COLUMNS`.
  Metrics: `clip_r_precision` (R@1 over the turntable views against the retrieval pool, see
  `db3d.eval.rprecision`) and `clip_t` (mean cosine between the views and the prompt text, token
  removed). `model` is the CLIP label (`ViT-B-16`, or `tiny-random(ViT-B-16)` for the random
  stand-ins of the `tiny` backend, whose rows carry the note `random-weight models`).
- `turntable.gif`, `contact_sheet.png`: the views the metrics were computed on.
- `retrieval_pool.json`: the prompt pool, the true prompt, its index, the CLIP labels.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..io import atomic_path, write_json
from .table import METRIC_COLUMNS

log = logging.getLogger(__name__)

RANDOM_WEIGHTS_NOTE = "random-weight models"


def resolve_device(cfg: dict) -> torch.device:
    dev = str(cfg.get("device", "auto"))
    if dev == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(dev)


def prompt_texts(cfg: dict, subject: str, prompt_id: str) -> dict:
    """The evaluated prompt (as trained, with token; and as CLIP sees it, without) and the pool."""
    from ..data.prompts import get_prompt, load_prompts, load_subjects
    from .rprecision import pool_with, render_without_token, retrieval_pool, strip_token

    prompts_path = Path(cfg["dataset"]["prompts_table"])
    subjects_path = Path(cfg["dataset"]["subjects_table"])
    p = get_prompt(prompts_path, subjects_path, subject, prompt_id)
    template = getattr(p, "template", None)
    clip_text = (render_without_token(template, p.class_noun) if template
                 else strip_token(p.text, getattr(p, "token", "")))
    pool = retrieval_pool(load_prompts(prompts_path), load_subjects(subjects_path))
    pool, true_index = pool_with(pool, clip_text)
    return {"prompt": p.text, "clip_text": clip_text, "pool": pool, "true_index": true_index}


def evaluate(cfg: dict, nerf_path: Path, subject_dir: Path, prompt_id: str, variant: str, setting: str,
             out_dir: Path) -> Path:
    """Render the fixed turntable of `nerf_path` and write its metrics into `out_dir`.

    Returns the path of `out_dir/metrics.tsv`.
    """
    import pandas as pd

    from ..nerf import load_nerf
    from .clip import load_clip
    from .rprecision import clip_t, r_precision
    from .turntable import render_turntable, write_turntable

    nerf_path, subject_dir, out_dir = Path(nerf_path), Path(subject_dir), Path(out_dir)
    subject = subject_dir.name
    seed = int(cfg.get("seed", (cfg.get("seeds") or [0])[0]))
    device = resolve_device(cfg)
    tiny = cfg["backend"] == "tiny"

    texts = prompt_texts(cfg, subject, prompt_id)

    field, background, meta = load_nerf(nerf_path)
    for m in (field, background):
        if hasattr(m, "to"):
            m.to(device)
        if hasattr(m, "eval"):
            m.eval()
    images, azimuths = render_turntable(cfg, field, background, meta, device=device)

    rows = []
    labels = []
    for name in cfg["models"]["clip"]:
        clip = load_clip(name, offline_tiny=tiny, device=device)
        labels.append(clip.label)
        note = RANDOM_WEIGHTS_NOTE if clip.random_weights else ""
        img_emb = clip.encode_images(images)
        pool_emb = clip.encode_text(texts["pool"])
        r1 = r_precision(img_emb, pool_emb, [texts["true_index"]] * len(img_emb), k=1)
        ct = clip_t(img_emb, pool_emb[texts["true_index"]])
        base = dict(subject=subject, prompt_id=prompt_id, variant=variant, setting=setting, seed=seed)
        rows.append({**base, "metric": "clip_r_precision", "model": clip.label, "value": r1, "note": note})
        rows.append({**base, "metric": "clip_t", "model": clip.label, "value": ct, "note": note})
        log.info("%s %s %s %s: R@1=%.3f CLIP-T=%.3f (%d views, pool of %d)", subject, prompt_id, variant,
                 clip.label, r1, ct, len(img_emb), len(texts["pool"]))
        del clip

    out_dir.mkdir(parents=True, exist_ok=True)
    write_turntable(out_dir, images, azimuths, title=f"{subject} / {prompt_id} / {variant} / {setting}")
    write_json(out_dir / "retrieval_pool.json",
               {"pool": texts["pool"], "true_index": texts["true_index"], "prompt": texts["prompt"],
                "clip_text": texts["clip_text"], "clip_models": labels, "num_views": len(images),
                "azimuth_deg": azimuths})
    df = pd.DataFrame(rows, columns=METRIC_COLUMNS)
    out = out_dir / "metrics.tsv"
    with atomic_path(out) as tmp:
        df.to_csv(tmp, sep="\t", index=False, float_format="%.6f")
    return out
