"""`python -m db3d evaluate`: fixed-camera renders of one NeRF, its metrics and its mesh.

Output, in `out_dir` (each file atomic; docs/evaluation.md):
- `metrics.tsv`: tidy long table, one row per (metric, model), columns `METRIC_COLUMNS`. Metrics:
  per CLIP model `clip_r_precision` (R@1 over the turntable views against the retrieval pool,
  `db3d.eval.rprecision`), `clip_t` (view-prompt cosine, token removed), `clip_i` (view-photo
  cosine, `db3d.eval.fidelity`) and `janus` (`db3d.eval.janus`); for the DINO model `dino_i`
  (view-photo cosine) and `janus`. `model` is the label (`ViT-B-16`, `facebook/dino-vits16`, or
  `tiny-random(...)` for the random stand-ins of the `tiny` backend, whose rows carry the note
  `random-weight models`). A NaN value (empty cell) carries its reason in `note`. For every run
  (`model` `opacity`): `coverage` and `collapsed` (coverage below `eval.collapse_coverage`;
  `db3d.eval.coverage`).
- `turntable.gif`, `contact_sheet.png`: the views the metrics were computed on.
- `mesh.glb`, `mesh.obj`: marching-cubes mesh with albedo vertex colours (`db3d.eval.mesh`;
  geometry only for a latent NeRF).
- `retrieval_pool.json`: the prompt pool, the true prompt, its index, the CLIP labels.
- for a synthetic subject (`object.json`) and its plain prompt: the ground-truth rows (`model`
  `ground truth`: psnr, psnr_back, ssim, lpips, silhouette_iou, chamfer, janus_gt; `db3d.eval.groundtruth`).
- `eval_info.json`: the Janus components per model, the photos used, the mesh, and the wall
  time of each part (`timing_s`; also logged).
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from ..io import atomic_path, write_json
from ..variants import EVAL_FILES
from .table import METRIC_COLUMNS

log = logging.getLogger(__name__)

RANDOM_WEIGHTS_NOTE = "random-weight models"
COVERAGE_MODEL = "opacity"  # the `model` column of the coverage and collapse rows (no network involved)


class Stopwatch:
    """Wall time of named parts (summed when a part repeats), synchronising CUDA around each."""

    def __init__(self, device: torch.device | None = None):
        self.device = device
        self.parts: dict[str, float] = {}
        self._start = time.perf_counter()

    def _sync(self) -> None:
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def part(self, name: str):
        self._sync()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            dt = time.perf_counter() - t0
            self.parts[name] = self.parts.get(name, 0.0) + dt
            log.info("evaluate: %s took %.2f s", name, dt)

    def summary(self) -> dict[str, float]:
        total = time.perf_counter() - self._start
        return {**{k: round(v, 3) for k, v in self.parts.items()}, "total": round(total, 3)}


def _note(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def resolve_device(cfg: dict) -> torch.device:
    dev = str(cfg["device"])
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
    """Render the fixed turntable of `nerf_path`, write its metrics, mesh and figures into `out_dir`.

    Returns the path of `out_dir/metrics.tsv` (written last).
    """
    import pandas as pd

    from ..nerf import load_nerf
    from .clip import load_clip
    from .dino import load_dino
    from .fidelity import fidelity, load_subject_photos
    from .janus import janus_score
    from .mesh import write_run_mesh
    from .rprecision import clip_t, r_precision
    from .turntable import nerf_channels, render_turntable, write_turntable

    nerf_path, subject_dir, out_dir = Path(nerf_path), Path(subject_dir), Path(out_dir)
    subject = subject_dir.name
    seed = int(cfg["seed"])  # resolved once, by db3d.config (a rule passes it in --config-json)
    device = resolve_device(cfg)
    tiny = cfg["backend"] in ("tiny", "toy")  # offline backends: random CLIP/DINO stand-ins
    clock = Stopwatch(device)

    with clock.part("load"):
        texts = prompt_texts(cfg, subject, prompt_id)
        photos = load_subject_photos(subject_dir)
        field, background, meta = load_nerf(nerf_path)
        for m in (field, background):
            if hasattr(m, "to"):
                m.to(device)
            if hasattr(m, "eval"):
                m.eval()
    with clock.part("render"):
        images, azimuths = render_turntable(cfg, field, background, meta, device=device)

    base = dict(subject=subject, prompt_id=prompt_id, variant=variant, setting=setting, seed=seed)
    rows: list[dict] = []
    labels: list[str] = []
    janus_info: dict[str, dict] = {}

    def add(metric: str, label: str, value: float, note: str) -> None:
        rows.append({**base, "metric": metric, "model": label, "value": value, "note": note})

    def add_janus(label: str, view_emb, note: str) -> None:
        j = janus_score(view_emb, azimuths)
        janus_info[label] = j.as_dict()
        add("janus", label, j.value, _note(note, j.reason))

    for name in cfg["models"]["clip"]:
        with clock.part(f"clip {name}"):
            clip = load_clip(name, offline_tiny=tiny, device=device)
            labels.append(clip.label)
            note = RANDOM_WEIGHTS_NOTE if clip.random_weights else ""
            img_emb = clip.encode_images(images)
            pool_emb = clip.encode_text(texts["pool"])
            photo_emb = clip.encode_images(photos.images)
            r1 = r_precision(img_emb, pool_emb, [texts["true_index"]] * len(img_emb), k=1)
            ct = clip_t(img_emb, pool_emb[texts["true_index"]])
            ci = fidelity(img_emb, photo_emb)
            add("clip_r_precision", clip.label, r1, note)
            add("clip_t", clip.label, ct, note)
            add("clip_i", clip.label, ci, note)
            add_janus(clip.label, img_emb, note)
            log.info("%s %s %s %s: R@1=%.3f CLIP-T=%.3f CLIP-I=%.3f janus=%.3f (%d views, pool of %d, %d photos)",
                     subject, prompt_id, variant, clip.label, r1, ct, ci, janus_info[clip.label]["janus"],
                     len(img_emb), len(texts["pool"]), len(photo_emb))
            del clip

    with clock.part("dino"):
        dino = load_dino(cfg["models"]["dino"], offline_tiny=tiny, device=device)
        note = RANDOM_WEIGHTS_NOTE if dino.random_weights else ""
        img_emb = dino.encode_images(images)
        di = fidelity(img_emb, dino.encode_images(photos.images))
        add("dino_i", dino.label, di, note)
        add_janus(dino.label, img_emb, note)
        log.info("%s %s %s %s: DINO-I=%.3f janus=%.3f", subject, prompt_id, variant, dino.label, di,
                 janus_info[dino.label]["janus"])
        dino_label = dino.label
        del dino

    with clock.part("coverage"):
        from .coverage import collapse_rows, nerf_coverage

        for metric, value, note in collapse_rows(cfg, nerf_coverage(cfg, field, background, meta, device)):
            add(metric, COVERAGE_MODEL, value, note)

    # synthetic subjects (object.json) have a true object: compare with it (db3d.eval.groundtruth)
    from ..synth.world import load_object
    from .groundtruth import GT_MODEL, ground_truth_for_run

    gt_obj, gt_info = load_object(subject_dir), None
    if gt_obj is not None:
        with clock.part("ground truth"):
            gt_rows, gt_info = ground_truth_for_run(cfg, field, background, meta, subject_dir, gt_obj,
                                                    texts["prompt"], device)
        for metric, value, note in gt_rows:
            add(metric, GT_MODEL, value, note)

    out_dir.mkdir(parents=True, exist_ok=True)
    with clock.part("mesh"):
        channels = nerf_channels(field, meta)
        mesh_info = write_run_mesh(field, latent=channels is not None and channels != 3, out_dir=out_dir)
        log.info("mesh: %d vertices, %d faces, threshold %.3g (%s), colours: %s", mesh_info["vertices"],
                 mesh_info["faces"], mesh_info["threshold"], mesh_info["threshold_source"], mesh_info["colours"])

    with clock.part("figures"):
        write_turntable(out_dir, images, azimuths, title=f"{subject} / {prompt_id} / {variant} / {setting}")

    timing = clock.summary()  # the small JSON/TSV writes below are not timed
    log.info("evaluate %s %s %s %s: %.1f s in all (%s)", subject, prompt_id, variant, setting, timing["total"],
             ", ".join(f"{k} {v:.2f}" for k, v in clock.parts.items()))
    write_json(out_dir / "retrieval_pool.json",
               {"pool": texts["pool"], "true_index": texts["true_index"], "prompt": texts["prompt"],
                "clip_text": texts["clip_text"], "clip_models": labels, "num_views": len(images),
                "azimuth_deg": azimuths})
    write_json(out_dir / "eval_info.json",
               {"device": str(device), "num_views": len(images), "azimuth_deg": azimuths,
                "clip_models": labels, "dino_model": dino_label,
                "photos": {"count": int(photos.images.shape[0]), "resolution": photos.resolution,
                           "files": [str(f) for f in photos.files]},
                "janus": janus_info, "mesh": mesh_info, "timing_s": timing,
                **({"ground_truth": gt_info} if gt_info is not None else {})})
    df = pd.DataFrame(rows, columns=METRIC_COLUMNS)
    out = out_dir / EVAL_FILES["metrics"]
    with atomic_path(out) as tmp:
        df.to_csv(tmp, sep="\t", index=False, float_format="%.6f")
    return out
