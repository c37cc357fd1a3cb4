"""Every variant end to end for a few steps on CPU with the tiny backend (nerfstudio's 2-step test),
and a killed NeRF run resuming to the same result as an uninterrupted one."""
from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from db3d import stages
from db3d.config import load_config
from db3d.data.build import build_subject
from db3d.io import read_json, torch_load

pytestmark = pytest.mark.timeout(600)
REPO = Path(__file__).resolve().parent.parent


def small_config() -> dict:
    cfg = load_config([REPO / "config" / "config.yaml", REPO / "config" / "tiny.yaml"])  # the tiny track
    cfg["seed"] = 0
    cfg["device"] = "cpu"
    cfg["dreambooth"].update(partial_steps=1, full_steps=2, multiview_steps=2, num_class_images=2,
                             class_sample_steps=2)
    cfg["nerf"].update(render_resolution=16, num_samples=16, grid_resolution=16)
    for stage in ("stage1", "stage3", "naive", "latent_nerf"):
        cfg[stage]["iters"] = 2
    cfg["stage2"].update(num_views=2, sample_steps=2, batch_size=2)
    cfg["eval"].update(num_views=2, resolution=32)
    return cfg


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A synthetic 'dog' subject (3 coloured-blob photos) built by the dataset code."""
    root = tmp_path_factory.mktemp("stages")
    src = root / "source" / "dog"
    src.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        img = np.full((96, 96, 3), 230, np.uint8)
        img[24:72, 20 + i * 4:68 + i * 4] = rng.integers(0, 255, 3, dtype=np.uint8)
        Image.fromarray(img).save(src / f"{i:02d}.jpg")
    build_subject(root / "source", "dog", root / "data" / "dog", resolutions=(64,), min_images=3)
    return root


@pytest.fixture(scope="module")
def trained(run_dir):
    """Class priors and the partial/full DreamBooth checkpoints every NeRF stage starts from."""
    cfg = small_config()
    stages.class_priors(cfg, "dog", run_dir / "priors")
    stages.dreambooth(cfg, run_dir / "data" / "dog", run_dir / "priors", run_dir / "db")
    return run_dir


def first_prompt_id(cfg: dict) -> str:
    from db3d.data.prompts import subject_prompt_ids

    return subject_prompt_ids(cfg["dataset"]["prompts_table"], "dog", 1)[0]


def run_all_stages(cfg: dict, run_dir, out):
    """Stage 1 -> pseudo views -> multi-view DreamBooth -> stage 3, the baselines, and evaluation,
    from the DreamBooth checkpoints in run_dir/db, writing under `out`."""
    subject = run_dir / "data" / "dog"
    priors, db, pid = run_dir / "priors", run_dir / "db", first_prompt_id(cfg)
    stages.fit_nerf(cfg, "stage1", db / "partial.safetensors", pid, subject, out / "stage1")
    stages.pseudo_views(cfg, out / "stage1" / "nerf.pt", db / "full.safetensors", pid, subject, out / "stage2")
    views = torch_load(out / "stage2" / "pseudo_views.pt")
    assert views["images"].shape[0] == 2 and len(views["directions"]) == 2
    sampler = "nerfacc" if cfg["device"] == "cuda" else "torch"  # recorded: a silent fallback shows
    assert views["sampler"] == sampler
    assert (out / "stage2" / "pseudo_views.png").exists()

    stages.dreambooth(cfg, subject, priors, out / "stage3", init=db / "partial.safetensors",
                      pseudo_views=out / "stage2" / "pseudo_views.pt")
    assert (out / "stage3" / "dreambooth_mv.safetensors").exists()
    mv = read_json(out / "stage3" / "dreambooth_mv_losses.json")
    assert any("view" in p for p in mv["instance_prompts"])  # pseudo views carry their direction

    stages.fit_nerf(cfg, "stage3", out / "stage3" / "dreambooth_mv.safetensors", pid, subject,
                    out / "stage3", pseudo_views=out / "stage2" / "pseudo_views.pt")
    stages.fit_nerf(cfg, "naive", db / "full.safetensors", pid, subject, out / "naive")
    stages.fit_nerf(cfg, "latent_nerf", db / "full.safetensors", pid, subject, out / "latent_nerf")

    for stage in ("stage1", "stage3", "naive", "latent_nerf"):
        losses = read_json(out / stage / "losses.json")
        assert len(losses["steps"]) == 2
        assert all(math.isfinite(s["loss"]) for s in losses["steps"]), stage
        assert losses["perf"]["iters_per_s"] > 0
        assert losses["meta"]["sampler"] == sampler, stage
        assert (out / stage / "turntable.png").exists()
        assert not (out / stage / ".resume.pt").exists()
    assert all("recon" in s for s in read_json(out / "stage3" / "losses.json")["steps"])

    from db3d.eval import evaluate

    for variant, stage in (("dreambooth3d", "stage3"), ("latent_nerf", "latent_nerf")):
        evaluate(cfg, out / stage / "nerf.pt", subject, pid, variant, "seed~0", out / "eval" / variant)
        text = (out / "eval" / variant / "metrics.tsv").read_text()
        assert "r_precision" in text.lower() or "rprecision" in text.lower()


def test_every_variant_runs_end_to_end(trained):
    cfg, run_dir = small_config(), trained
    assert len(read_json(run_dir / "priors" / "manifest.json")["files"]) == 2
    assert (run_dir / "db" / "partial.safetensors").exists() and (run_dir / "db" / "full.safetensors").exists()
    assert len(read_json(run_dir / "db" / "losses.json")["steps"]) == 2
    run_all_stages(cfg, run_dir, run_dir / "cpu")


@pytest.mark.gpu
def test_every_variant_runs_end_to_end_on_cuda(trained):
    """The same on CUDA: nerfacc's occupancy-grid estimator, fp16 diffusion under autocast."""
    cfg, run_dir = small_config(), trained
    cfg.update(device="cuda", precision="fp16")
    run_all_stages(cfg, run_dir, run_dir / "cuda")
    losses = read_json(run_dir / "cuda" / "stage1" / "losses.json")
    assert losses["perf"]["device"].startswith("cuda") and losses["perf"]["peak_gpu_mem_gib"] > 0


def test_killed_nerf_run_resumes_to_the_same_result(trained, monkeypatch):
    cfg, run_dir = small_config(), trained
    cfg["stage1"]["iters"] = 6
    monkeypatch.setattr(stages, "RESUME_EVERY", 3)
    subject, pid = run_dir / "data" / "dog", first_prompt_id(cfg)
    ckpt = run_dir / "db" / "partial.safetensors"
    stages.fit_nerf(cfg, "stage1", ckpt, pid, subject, run_dir / "straight")

    real_step = torch.optim.Adam.step
    calls = {"n": 0}

    def dying_step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("killed")
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        stages.fit_nerf(cfg, "stage1", ckpt, pid, subject, run_dir / "resumed")
    assert (run_dir / "resumed" / ".resume.pt").exists()
    assert not (run_dir / "resumed" / "nerf.pt").exists()
    monkeypatch.setattr(torch.optim.Adam, "step", real_step)
    stages.fit_nerf(cfg, "stage1", ckpt, pid, subject, run_dir / "resumed")

    a = torch_load(run_dir / "straight" / "nerf.pt")
    b = torch_load(run_dir / "resumed" / "nerf.pt")
    sa, sb = a["field"]["state"], b["field"]["state"]
    for k in sa:
        assert torch.allclose(sa[k], sb[k], atol=1e-6), k
    la = [s["loss"] for s in read_json(run_dir / "straight" / "losses.json")["steps"]]
    lb = [s["loss"] for s in read_json(run_dir / "resumed" / "losses.json")["steps"]]
    assert la == pytest.approx(lb, rel=1e-5)


@pytest.mark.parametrize("change", ["sds.guidance_scale=50.0", "stage1.iters=2", "nerf.hidden_dim=16"])
def test_a_resume_state_from_other_settings_is_discarded_with_one_line(trained, monkeypatch, caplog, change):
    """Killed, then the config changed: the rerun starts clean (equal to a clean run of the new
    config), says so in one line, and never resumes the old state, fails on it or reports
    negative it/s (issue 22: guidance 100 -> 50 resumed silently, iters 150 -> 20 gave -3564 it/s,
    hidden_dim 32 -> 16 a traceback on every rerun)."""
    import shutil

    cfg, run_dir = small_config(), trained
    cfg["stage1"]["iters"] = 6
    monkeypatch.setattr(stages, "RESUME_EVERY", 3)
    subject, pid = run_dir / "data" / "dog", first_prompt_id(cfg)
    ckpt = run_dir / "db" / "partial.safetensors"
    old = run_dir / "old_settings"
    if not (old / ".resume.pt").exists():  # a run of the old settings killed after its state at step 3
        real_step = torch.optim.Adam.step
        calls = {"n": 0}

        def dying_step(self, *a, **k):
            calls["n"] += 1
            if calls["n"] == 5:
                raise KeyboardInterrupt("killed")
            return real_step(self, *a, **k)

        monkeypatch.setattr(torch.optim.Adam, "step", dying_step)
        with pytest.raises(KeyboardInterrupt):
            stages.fit_nerf(cfg, "stage1", ckpt, pid, subject, old)
        monkeypatch.setattr(torch.optim.Adam, "step", real_step)
    key, value = change.split("=")
    section, name = key.split(".")
    new = copy.deepcopy(cfg)
    new[section][name] = type(cfg[section][name])(float(value))
    out = run_dir / f"changed_{section}_{name}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    shutil.copy(old / ".resume.pt", out / ".resume.pt")
    with caplog.at_level("WARNING", logger="db3d.io"):
        stages.fit_nerf(new, "stage1", ckpt, pid, subject, out)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and f"{key} " in warnings[0] and "discarded" in warnings[0], warnings
    clean = run_dir / f"clean_{section}_{name}"
    stages.fit_nerf(new, "stage1", ckpt, pid, subject, clean)
    a, b = torch_load(out / "nerf.pt"), torch_load(clean / "nerf.pt")
    assert a["field"]["config"] == b["field"]["config"]
    for k, v in a["field"]["state"].items():
        assert torch.equal(v, b["field"]["state"][k]), k
    losses = read_json(out / "losses.json")
    assert len(losses["steps"]) == new["stage1"]["iters"] and losses["perf"]["iters_per_s"] > 0
    assert not (out / ".resume.pt").exists()


def test_an_unreadable_resume_state_is_discarded(tmp_path, caplog):
    from db3d.io import load_resume_state, resume_settings, torch_save

    settings = resume_settings(cfg={"a": {"b": 1}}, stage="stage1")
    assert settings == {"cfg.a.b": 1, "stage": "stage1"}
    path = tmp_path / ".resume.pt"
    torch_save({"step": 3, "settings": settings}, path)
    assert load_resume_state(path, settings)["step"] == 3  # the same settings: resumed
    path.write_bytes(path.read_bytes()[:20])  # cut short (not by our atomic writes: by a full disk, a copy)
    with caplog.at_level("WARNING", logger="db3d.io"):
        assert load_resume_state(path, settings) is None
    assert not path.exists() and "unreadable" in caplog.text
    torch_save({"step": 3}, path)  # a state of the format before settings were recorded
    assert load_resume_state(path, settings) is None and not path.exists()


def test_partial_equal_to_full_writes_both_checkpoints(run_dir):
    """The naive case of the partial_steps ablation (partial = full) still gives partial.safetensors."""
    cfg = small_config()
    cfg["dreambooth"].update(partial_steps=2, full_steps=2)
    stages.class_priors(cfg, "dog", run_dir / "priors_eq")
    stages.dreambooth(cfg, run_dir / "data" / "dog", run_dir / "priors_eq", run_dir / "db_eq")
    partial = (run_dir / "db_eq" / "partial.safetensors").read_bytes()
    assert partial and partial == (run_dir / "db_eq" / "full.safetensors").read_bytes()


def test_compile_unet_compiles_the_denoiser_after_loading(monkeypatch):
    from db3d.diffusion.base import DiffusionBackend

    cfg = small_config()
    cfg["compile_unet"] = True
    order = []
    monkeypatch.setattr(DiffusionBackend, "load_finetuned", lambda self, path: order.append("load"))
    monkeypatch.setattr(DiffusionBackend, "compile_models", lambda self, *a, **k: order.append(k) or [])
    stages._backend(cfg, Path("ckpt.safetensors"))
    assert order == ["load", stages.STAGE_COMPILE]
    cfg["compile_unet"] = False
    stages._backend(cfg)
    assert order == ["load", stages.STAGE_COMPILE]

