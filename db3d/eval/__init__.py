"""Evaluation: fixed-camera turntables of a NeRF, prompt fidelity (CLIP R-Precision, CLIP-T),
subject fidelity (DINO, CLIP-I), the Janus score, the mesh, the metrics table (docs/evaluation.md).

Public API (imported lazily so `collect-metrics` does not pay for torch/open_clip/transformers):
- `evaluate(cfg, nerf_path, subject_dir, prompt_id, variant, setting, out_dir)` (`run.py`)
- `collect_metrics(inputs, out)` (`table.py`)
- `load_clip(name, offline_tiny)`, `ClipModel` (`clip.py`); `load_dino(name, offline_tiny)`, `DinoModel` (`dino.py`)
- `r_precision(image_emb, text_emb, true_index, k=1)`, `clip_t`, `retrieval_pool` (`rprecision.py`)
- `fidelity(view_emb, photo_emb)`, `load_subject_photos(subject_dir)` (`fidelity.py`)
- `janus_score(view_emb, azimuth_deg, reference=None) -> JanusScore` (`janus.py`)
- `run_mesh(field, latent)`, `write_run_mesh(field, latent, out_dir)` (`mesh.py`)
- `render_turntable`, `write_turntable` (`turntable.py`)
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "evaluate": "run", "METRIC_COLUMNS": "table",
    "collect_metrics": "table", "read_metrics": "table",
    "load_clip": "clip", "ClipModel": "clip",
    "r_precision": "rprecision", "clip_t": "rprecision", "retrieval_pool": "rprecision",
    "render_turntable": "turntable", "write_turntable": "turntable",
    "load_dino": "dino", "DinoModel": "dino",
    "fidelity": "fidelity", "load_subject_photos": "fidelity",
    "janus_score": "janus", "JanusScore": "janus",
    "run_mesh": "mesh", "write_run_mesh": "mesh",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
