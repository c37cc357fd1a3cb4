"""Evaluation: fixed-camera turntables of a NeRF, CLIP R-Precision and CLIP-T, the metrics table.

Public API (imported lazily so `collect-metrics` does not pay for torch/open_clip):
- `evaluate(cfg, nerf_path, subject_dir, prompt_id, variant, setting, out_dir)` (`run.py`)
- `collect_metrics(inputs, out)` (`table.py`)
- `load_clip(name, offline_tiny)`, `ClipModel` (`clip.py`)
- `r_precision(image_emb, text_emb, true_index, k=1)`, `clip_t`, `retrieval_pool` (`rprecision.py`)
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
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
