"""`python -m db3d bench`: what each stage of the method costs (iterations/s, peak GPU memory).

One run times, for one backend/config, the units of work the pipeline repeats (docs/performance.md):
a DreamBooth step, an SDS step (= one `fit_nerf` iteration) at one or more render resolutions,
a stage-3 iteration, img2img of the stage-2 views, one batch of class-prior sampling, the evaluation
of one run, the resume/checkpoint writes, plus two reference points (the bare UNet with CFG at
batch 1; diffusers' own DreamBooth training step on the same model and batch). From the table it
projects the wall time of one subject through all three stages at the config's iteration counts.
Variants (`--variant`) A/B optimisations that do not change what is computed (precision,
channels_last, attention processor, the VAE's attention and autocast, torch.compile, CUDA graphs,
TF32, occupancy grid, deterministic kernels, gradient checkpointing, a memory cap).

Modules (imported lazily, so `python -m db3d --help` does not pay for torch):
- `args`: the command-line arguments and the variant mini-language (torch-free);
- `workloads`: the timed work: the stages' own objects (`NerfFit`, `DreamBoothTrainer`,
  `img2img_views`), set up with benchmark inputs;
- `report`: rows, ratios, the projection, TSV + Markdown output (torch-free);
- `configuration`: the config benchmarked (db3d.config.load_config), the variants' options applied;
- `probes`: timers, peak memory, how a failed row reads;
- `rows`: one method per row, timing one unit of work;
- `runner`: the run (variants x rows, error capture, tables after every row); `run_bench`, `main`.

Run on their own (`python -m db3d.bench.<module>`): `stagecheck`, a whole NeRF stage job with a clock
per iteration; `profile`, one NeRF iteration under torch.profiler (wall vs GPU time, launches, the
labelled parts of the step, top ops).
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "add_arguments": "args", "Options": "args", "Variant": "args", "parse_variant": "args",
    "ROW_KEYS": "args",
    "Row": "report", "project": "report", "write_tables": "report", "read_table": "report",
    "add_ratios": "report", "COLUMNS": "report",
    "run_bench": "runner", "main": "runner", "load_bench_config": "configuration",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
