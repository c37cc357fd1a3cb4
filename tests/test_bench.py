"""`python -m db3d bench`: the table (rows, columns, ratios), the projection arithmetic, the variant
language, error rows, and that the timed work is the stages' own code (their objects, same losses)."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch

from db3d.bench import COLUMNS, Options, Row, Variant, load_bench_config, parse_variant, project, read_table, run_bench
from db3d.bench.args import ROW_KEYS, coerce_option, parse_rows
from db3d.bench.report import projection_lines
from db3d.config import REPO_ROOT

SMALL = {  # the tiny track (config/tiny.yaml's backend and DreamBooth subject tables), smaller still
    "backend": "tiny", "device": "cpu",
    "dataset.subjects_table": "config/subjects.tsv", "dataset.prompts_table": "config/prompts.tsv",
    "nerf.render_resolution": "16", "nerf.num_samples": "8", "nerf.grid_resolution": "16",
    "stage2.num_views": "2", "stage2.sample_steps": "2", "stage2.batch_size": "2",
    "eval.num_views": "2", "eval.resolution": "16",
    "dreambooth.class_sample_steps": "2", "dreambooth.num_class_images": "4",
    "models.clip": "[ViT-B-32]",
}
BASE_ROWS = {"backend_build", "dreambooth_step", "diffusers_dreambooth_step", "unet_cfg_b1", "sds_step",
             "sds_step_stage3", "img2img_views", "class_prior_batch", "eval_run", "dreambooth_resume_save",
             "dreambooth_checkpoint_save", "nerf_resume_save",
             # a stage job's start-up: process, model builds, the first calls' warm-up
             "process_start", "eval_models_build", "dreambooth_step_warmup", "unet_cfg_b1_warmup", "sds_step_warmup",
             "sds_step_stage3_warmup", "img2img_views_warmup", "class_prior_batch_warmup", "eval_run_warmup"}


def small_cfg(**extra: str) -> dict:
    cfg = load_bench_config(None, {**SMALL, **extra})
    for key in ("prompts_table", "subjects_table"):
        cfg["dataset"][key] = str(REPO_ROOT / cfg["dataset"][key])
    return cfg


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """The whole benchmark through the CLI on CPU, tiny backend, 2 repeats: (exit code, tsv, rows)."""
    from db3d.cli import main

    out = tmp_path_factory.mktemp("bench") / "tiny.tsv"
    argv = ["bench", "--out", str(out), "--repeats", "2", "--warmup", "0", "--sds-block", "1", "--sds-repeats", "1",
            "--sds-resolutions", "16,24", "--scratch", str(out.parent / "scratch"),
            "--variant", "chl channels_last=1 attention=classic rows=unet,db"]
    for k, v in SMALL.items():
        argv += ["--set", f"{k}={v}"]
    rc = main(argv)
    return rc, out, read_table(out)


def _f(x: str) -> float:
    return float(x)


def test_cli_bench_table(cli_run):
    rc, out, rows = cli_run
    assert rc == 0
    header = out.read_text().splitlines()[0].split("\t")
    assert header == COLUMNS
    base = [r for r in rows if r["variant"] == "base"]
    assert {r["row"] for r in base} == BASE_ROWS
    bad = [(r["row"], r["note"]) for r in rows if r["status"] != "ok"]
    assert not bad, bad
    assert sorted(int(r["res"]) for r in base if r["row"] == "sds_step") == [16, 24]
    for r in rows:
        assert r["precision"] == "fp32"
        if r["row"].endswith("_warmup"):  # the warm-up's excess over steady calls: may be 0
            assert _f(r["ms"]) >= 0 and r["unit"] == "run" and r["iters_per_s"] == "", r
            continue
        ms, ips = _f(r["ms"]), _f(r["iters_per_s"])
        assert ms > 0 and math.isclose(ips, 1000.0 / ms, rel_tol=1e-3, abs_tol=2e-3), r
    by = {(r["variant"], r["row"], r["res"]): r for r in rows}
    assert int(by[("base", "dreambooth_step", "64")]["repeats"]) == 2
    assert int(by[("base", "sds_step", "16")]["repeats"]) == 1
    # ratios: SDS step / UNet floor, our DreamBooth step / diffusers' step, same variant
    unet = _f(by[("base", "unet_cfg_b1", "16")]["ms"])
    sds = by[("base", "sds_step", "16")]
    assert sds["ratio_to"] == "unet_cfg_b1"
    assert math.isclose(_f(sds["ratio"]), _f(sds["ms"]) / unet, rel_tol=2e-2)
    db = by[("base", "dreambooth_step", "64")]
    assert db["ratio_to"] == "diffusers_dreambooth_step"
    assert math.isclose(_f(db["ratio"]), _f(db["ms"]) / _f(by[("base", "diffusers_dreambooth_step", "64")]["ms"]),
                        rel_tol=2e-2)
    chl = [r for r in rows if r["variant"] == "chl"]
    assert {r["row"] for r in chl} == {"dreambooth_step", "unet_cfg_b1", "dreambooth_step_warmup", "unet_cfg_b1_warmup"}
    assert all("channels_last=1" in r["options"] and "attention=classic" in r["options"] for r in chl)
    assert float(by[("base", "eval_run", "16")]["batch"]) == 2


def test_cli_bench_markdown(cli_run):
    _, out, _ = cli_run
    md = out.with_suffix(".md").read_text()
    for text in ("# db3d benchmark: tiny", "- device: CPU", f"- torch: {torch.__version__}", "- precision:",
                 "- date:", "## Projection", "one subject, one prompt", "status: complete", "| variant | row |"):
        assert text in md, text
    assert not list(out.parent.glob(".tiny.*"))  # atomic writes left no temporaries


def test_projection_arithmetic():
    cfg = load_bench_config(REPO_ROOT / "config" / "paper.yaml")
    cfg["dreambooth"].update(full_steps=800, partial_steps=150, multiview_steps=150, num_class_images=200)
    cfg["stage1"]["iters"] = cfg["stage3"]["iters"] = 5000
    cfg["nerf"]["render_resolution"] = 64
    cfg["dataset"].update(subjects="all", prompts_per_subject=4)
    cfg["seeds"] = [0, 1, 2]
    rows = [Row.timed("base", "class_prior_batch", [1000.0]), Row.timed("base", "dreambooth_step", [300.0]),
            Row.timed("base", "dreambooth_resume_save", [5000.0]),
            Row.timed("base", "dreambooth_checkpoint_save", [2000.0]),
            Row.timed("base", "sds_step", [100.0], res=64), Row.timed("base", "sds_step", [999.0], res=128),
            Row.timed("base", "nerf_resume_save", [50.0]), Row.timed("base", "img2img_views", [8000.0]),
            Row.timed("base", "sds_step_stage3", [150.0], res=64), Row.timed("base", "eval_run", [4000.0]),
            Row.timed("bf16", "dreambooth_step", [1.0]),  # another variant: ignored
            Row("base", "sds_step", status="error", res=64, note="x")]  # failed rows: ignored
    p = project(cfg, rows, db_resume_every=10, nerf_resume_every=25, startup=False)
    secs = {s["stage"]: s["seconds"] for s in p["stages"]}
    assert secs["class priors"] == pytest.approx(50 * 1.0)
    assert secs["DreamBooth (partial + full)"] == pytest.approx(800 * 0.3 + 79 * 5.0 + 2 * 2.0)
    assert secs["stage 1 NeRF"] == pytest.approx(5000 * 0.1 + 199 * 0.05)
    assert secs["stage 2 pseudo views"] == pytest.approx(8.0)
    assert secs["multi-view DreamBooth"] == pytest.approx(150 * 0.3 + 14 * 5.0 + 1 * 2.0)
    assert secs["stage 3 NeRF"] == pytest.approx(5000 * 0.15 + 199 * 0.05)
    assert secs["evaluation"] == pytest.approx(4.0)
    assert p["total_s"] == pytest.approx(2087.9)
    assert p["complete"]
    assert p["per_subject_s"] == pytest.approx(689.0)
    assert p["grid"]["seconds"] == pytest.approx(3 * 30 * (689.0 + 4 * 1398.9))
    # a missing row is reported, not guessed
    p2 = project(cfg, [r for r in rows if r.row != "img2img_views"], db_resume_every=10, startup=False)
    assert not p2["complete"]
    assert [s["missing"] for s in p2["stages"] if s["stage"] == "stage 2 pseudo views"] == [["img2img_views"]]
    assert p2["total_s"] == pytest.approx(2087.9 - 8.0)
    # by default DreamBooth saves its resume state by time (every 600 s of training): none in
    # 800 x 0.3 s = 240 s, one in 800 x 1 s
    p3 = {s["stage"]: s["seconds"] for s in project(cfg, rows, startup=False)["stages"]}
    assert p3["DreamBooth (partial + full)"] == pytest.approx(800 * 0.3 + 2 * 2.0)
    slow = [Row.timed("base", "dreambooth_step", [1000.0]) if r.row == "dreambooth_step" and r.variant == "base"
            else r for r in rows]
    p4 = {s["stage"]: s["seconds"] for s in project(cfg, slow, startup=False)["stages"]}
    assert p4["DreamBooth (partial + full)"] == pytest.approx(800 * 1.0 + 1 * 5.0 + 2 * 2.0)
    # with start-up (the default): every job pays process start + model build + its warm-up once;
    # without those rows the projection says they are missing
    p5 = project(cfg, rows, db_resume_every=10)
    assert not p5["complete"] and p5["startup_s"] == 0
    assert "process_start" in p5["stages"][0]["missing"] and "unet_cfg_b1_warmup" in p5["stages"][2]["missing"]
    start = [Row.timed("base", "process_start", [5000.0]), Row.timed("base", "backend_build", [4000.0]),
             Row.timed("base", "eval_models_build", [6000.0]), Row.timed("base", "unet_cfg_b1_warmup", [500.0]),
             Row.timed("base", "sds_step_warmup", [1000.0], res=64),
             Row.timed("base", "sds_step_stage3_warmup", [1500.0], res=64),
             Row.timed("base", "dreambooth_step_warmup", [2000.0]), Row.timed("base", "img2img_views_warmup", [3000.0]),
             Row.timed("base", "class_prior_batch_warmup", [700.0]), Row.timed("base", "eval_run_warmup", [800.0])]
    p6 = project(cfg, rows + start, db_resume_every=10)
    assert p6["complete"] and p6["jobs"] == 7
    s6 = {s["stage"]: s["startup_s"] for s in p6["stages"]}
    assert s6 == pytest.approx({"class priors": 9.7, "DreamBooth (partial + full)": 11.0, "stage 1 NeRF": 10.5,
                                "stage 2 pseudo views": 12.0, "multi-view DreamBooth": 11.0, "stage 3 NeRF": 11.0,
                                "evaluation": 11.8})
    assert p6["startup_s"] == pytest.approx(77.0)
    assert p6["total_s"] == pytest.approx(2087.9 + 77.0)
    assert p6["per_subject_s"] == pytest.approx(689.0 + 9.7 + 11.0)
    assert "start-up 10.5 s [process_start (5.0 s), backend_build (4.0 s), unet_cfg_b1_warmup (0.5 s), " \
           "sds_step_warmup@64 (1.0 s)]" in p6["stages"][2]["formula"]
    lines = "\n".join(projection_lines(p6))
    assert "of which job start-up" in lines and "1m17s" in lines and "steady work alone" in lines


def test_variant_language():
    base = Options(precision="fp16")
    v = parse_variant("bf16 precision=bf16 rows=sds,unet", base, ("db",))
    assert v.name == "bf16" and v.options.precision == "bf16" and v.rows == ("unet", "sds")
    v = parse_variant("nogrid occgrid=off tf32", base, ("db", "ref"))
    assert v.options.occgrid == "off" and v.options.tf32 and v.options.precision == "fp16" and v.rows == ("db", "ref")
    assert parse_variant("compile=1", base, ROW_KEYS).options.compile == "default"
    assert parse_variant("m memlimit=24 lora_rank=4 train_text_encoder=1", base, ROW_KEYS).options.memlimit == 24.0
    assert parse_rows("all") == ROW_KEYS
    for bad in ("x precision=fp8", "x nosuch=1", "x rows=sds,bogus", "x occgrid=maybe", "x compile=fast"):
        with pytest.raises(ValueError):
            parse_variant(bad, base, ROW_KEYS)
    assert coerce_option("channels_last", "0") is False
    v = parse_variant("prev vae_attention=sdpa vae_autocast=1", base, ROW_KEYS)
    assert (v.options.vae_attention, v.options.vae_autocast) == ("sdpa", True)
    assert parse_variant("x vae_autocast=0", base, ROW_KEYS).options.vae_autocast is False
    with pytest.raises(ValueError):
        parse_variant("x vae_attention=flash", base, ROW_KEYS)
    assert Options().describe() == "defaults"
    assert Options(tf32=True, occgrid="dense").describe() == "tf32=1 occgrid=dense"


def test_config_merges_partial_files_and_validates():
    from db3d.config import load_config
    from db3d.errors import ConfigError

    cfg = load_bench_config(REPO_ROOT / "config" / "paper.yaml", {"backend": "sd", "models.sd": "random"})
    assert cfg["backend"] == "sd" and cfg["models"]["sd"] == "random" and cfg["precision"] == "fp16"
    assert cfg["stage1"]["iters"] == 5000 and cfg["stage2"]["batch_size"] == 4  # paper.yaml over config.yaml
    assert cfg["seed"] == 0
    both = [REPO_ROOT / "config" / "config.yaml", REPO_ROOT / "config" / "paper.yaml"]  # cli: --config a --config b
    assert load_bench_config(both, {"backend": "sd", "models.sd": "random"}) == cfg
    with pytest.raises(ConfigError):
        load_bench_config(None, {"precision": "fp8"})
    assert load_bench_config(config_json=json.dumps(cfg))["stage1"]["iters"] == 5000
    with pytest.raises(ConfigError, match="precision"):  # the JSON goes through the same loader
        load_bench_config(config_json=json.dumps(dict(cfg, precision="fp8")))
    # one loader: the benchmark's config is the commands' config for the same files and --set
    assert cfg == load_config([REPO_ROOT / "config" / "config.yaml", REPO_ROOT / "config" / "paper.yaml"],
                              {"backend": "sd", "models.sd": "random"})


def test_failing_row_is_a_row_and_the_run_goes_on(tmp_path, monkeypatch):
    from db3d.bench import workloads

    def boom(self, step):
        raise RuntimeError("boom")

    monkeypatch.setattr(workloads.NerfRun, "step", boom)
    out = tmp_path / "err.tsv"
    rows = run_bench(small_cfg(), out, variants=[Variant("base", Options(), rows=("unet", "sds", "sds3"))],
                     repeats=1, warmup=0, sds_block=1, sds_repeats=1)
    got = {(r.row, r.status) for r in rows}
    assert got == {("unet_cfg_b1", "ok"), ("unet_cfg_b1_warmup", "ok"), ("sds_step", "error"),
                   ("sds_step_stage3", "error")}
    table = read_table(out)
    assert [r["status"] for r in table] == ["ok", "ok", "error", "error"]
    assert "RuntimeError: boom" in table[2]["note"]


def test_interrupt_and_time_budget_keep_the_table(tmp_path, monkeypatch):
    from db3d.bench.runner import Bench

    def interrupt(self, *a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(Bench, "row_sds", interrupt)
    out = tmp_path / "int.tsv"
    with pytest.raises(KeyboardInterrupt):
        run_bench(small_cfg(), out, variants=[Variant("base", Options(), rows=("unet", "sds"))],
                  repeats=1, warmup=0)
    assert [r["row"] for r in read_table(out)] == ["unet_cfg_b1", "unet_cfg_b1_warmup"]
    assert "status: interrupted" in out.with_suffix(".md").read_text()

    out2 = tmp_path / "budget.tsv"
    rows = run_bench(small_cfg(), out2, variants=[Variant("base", Options(), rows=("unet",))], time_budget=1e-9)
    assert [(r.row, r.status) for r in rows] == [("variant", "skipped")]
    assert "status: time budget reached" in out2.with_suffix(".md").read_text()


def _spy(monkeypatch, owner, name: str) -> list:
    """Wrap `owner.name` (a method or module function) so every call's return value is recorded."""
    real, calls = getattr(owner, name), []

    def spy(*a, **k):
        out = real(*a, **k)
        calls.append(out)
        return out

    monkeypatch.setattr(owner, name, spy)
    return calls


def test_dreambooth_step_is_trains_step(tiny_cfg, tmp_path, monkeypatch):
    """The bench's DreamBooth step is `DreamBoothTrainer.train_step`, the step `dreambooth.train`
    runs, and its resume save is the one train writes (same records, weights)."""
    from db3d import dreambooth
    from db3d.bench.workloads import DreamBoothRun, random_images
    from db3d.diffusion import build_backend

    steps = _spy(monkeypatch, dreambooth.DreamBoothTrainer, "train_step")
    saves = _spy(monkeypatch, dreambooth.DreamBoothTrainer, "resume_state")
    cfg = dict(tiny_cfg, device="cpu")
    db = cfg["dreambooth"]
    inst, cls = random_images(3, 64, 1), random_images(2, 64, 2)
    a = build_backend(cfg, device="cpu")
    want = dreambooth.train(a, inst, "a sks dog", cls, "a dog", steps=2, lr=db["learning_rate"],
                            batch_size=db["batch_size"], prior_loss_weight=db["prior_loss_weight"],
                            train_text_encoder=False, lora_rank=0, seed=0, checkpoints={},
                            resume_path=tmp_path / ".resume.pt", resume_every=1, progress=False)
    assert steps == want and len(saves) == 1  # train's loop is train_step; its resume write is resume_state
    b = build_backend(cfg, device="cpu")
    run = DreamBoothRun(cfg, b, lora_rank=0, train_text_encoder=False, instance_images=inst,
                        instance_prompts=["a sks dog"] * 3, class_images=cls, class_prompt="a dog", seed=0)
    assert type(run.trainer) is dreambooth.DreamBoothTrainer
    got = [run.step(s) for s in (1, 2)]
    assert len(steps) == 4 and all(g is s for g, s in zip(got, steps[2:]))
    state = run.resume_state(2)
    assert state is saves[-1] and list(state) == ["fingerprint", "step", "records", "weights", "optimizer",
                                                  "scaler", "rng"]
    run.close()
    assert got == want
    wa, wb = a.finetuned_state_dict(), b.finetuned_state_dict()
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("stage", ["stage1", "stage3"])
def test_sds_iteration_is_nerffits_iteration(tmp_path, monkeypatch, stage):
    """The bench's NeRF iteration is `stages.NerfFit.iteration`, the iteration `fit_nerf` runs, and
    its resume save is the one fit_nerf writes (same loss records from the same seed)."""
    from db3d import stages
    from db3d.bench.workloads import NerfRun
    from db3d.data.prompts import get_prompt
    from db3d.diffusion import build_backend
    from db3d.io import read_json, torch_save
    from db3d.nerf import orbit_cameras

    iterations = _spy(monkeypatch, stages.NerfFit, "iteration")
    saves = _spy(monkeypatch, stages.NerfFit, "resume_state")
    monkeypatch.setattr(stages, "RESUME_EVERY", 1)
    cfg = small_cfg()
    cfg["stage1"]["iters"] = cfg["stage3"]["iters"] = 2
    backend = build_backend(cfg)
    ckpt = tmp_path / "db.safetensors"
    backend.save_finetuned(ckpt)
    views = {"cameras": orbit_cameras(2, 1.8, 15.0, 55.0), "images": torch.rand(2, 3, 64, 64)}
    torch_save(views, tmp_path / "pv.pt")
    stages.fit_nerf(cfg, stage, ckpt, "plain", Path("backpack"), tmp_path / "out",
                    pseudo_views=tmp_path / "pv.pt" if stage == "stage3" else None)
    want = read_json(tmp_path / "out" / "losses.json")["steps"]
    assert json.loads(json.dumps([rec for _, rec in iterations])) == want and len(saves) == 1

    prompt = get_prompt(cfg["dataset"]["prompts_table"], cfg["dataset"]["subjects_table"], "backpack", "plain").text
    backend.load_finetuned(ckpt)
    run = NerfRun(cfg, backend, stage=stage, prompt=prompt, pseudo_views=views)
    assert type(run.fit) is stages.NerfFit
    got = [run.step(s) for s in range(2)]
    assert len(iterations) == 4 and all(g is rec for g, (_, rec) in zip(got, iterations[2:]))
    assert run.resume_state(1) is saves[-1]
    assert json.loads(json.dumps(got)) == want


def test_profile_names_the_parts_of_an_iteration():
    """`python -m db3d.bench.profile`'s summary: a timed step and the iteration's labelled regions."""
    from db3d.bench.profile import format_summary, profile_steps

    cfg = small_cfg()
    cfg["stage1"]["iters"] = 4
    s = profile_steps(cfg, "stage1", steps=1, warmup=1)
    assert {"nerf.render", "sds", "sds.encode", "sds.unet", "backward", "adam"} <= s["regions"].keys()
    assert s["wall_ms_median"] > 0 and s["samples_per_step"] > 0 and s["top_cpu"]
    assert s["gpu_busy_fraction"] is None and "nerf.render" in format_summary(s)


def test_img2img_row_is_stage2(tmp_path, monkeypatch):
    """The bench's stage-2 run is `stages.img2img_views` + `stages.save_pseudo_views`, as `pseudo_views`."""
    from db3d import stages
    from db3d.bench.workloads import Img2ImgRun
    from db3d.diffusion import build_backend
    from db3d.io import torch_load

    made = _spy(monkeypatch, stages, "img2img_views")
    saved = _spy(monkeypatch, stages, "save_pseudo_views")
    cfg = small_cfg()
    run = Img2ImgRun(cfg, build_backend(cfg), tmp_path)
    images = run.run(num_steps=2)
    assert len(made) == len(saved) == 1 and images is made[0]["images"]
    assert torch.equal(torch_load(tmp_path / "pseudo_views.pt")["images"], images)


def test_diffusers_reference_step_trains(tiny_cfg):
    from db3d.bench.workloads import DiffusersDreamBooth
    from db3d.diffusion import build_backend

    for space, precompute in (("latent", False), ("pixel", True)):
        cfg = copy.deepcopy(dict(tiny_cfg, device="cpu"))
        cfg["models"]["tiny_space"] = space
        b = build_backend(cfg, device="cpu")
        before = {k: v.clone() for k, v in b.unet.state_dict().items()}
        ref = DiffusersDreamBooth(cfg, b, lora_rank=0, train_text_encoder=False, precompute_text=precompute)
        losses = [float(ref.step())]
        ref.close()
        assert all(math.isfinite(x) and x > 0 for x in losses)
        after = b.unet.state_dict()
        assert any(not torch.equal(before[k], after[k]) for k in before)
        assert not any(p.requires_grad for p in b.parameters())


def test_random_full_size_clip_offline(monkeypatch):
    """The eval row of sd/if builds open_clip's architectures with random weights: no download."""
    from db3d.bench.workloads import random_clip

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    clip = random_clip("ViT-B-32", torch.device("cpu"))
    assert clip.image_size == 224 and clip.label == "random(ViT-B-32)"
    img, txt = clip.encode_images(torch.rand(1, 3, 32, 32)), clip.encode_text(["a dog"])
    assert img.shape == (1, 512) and txt.shape == (1, 512)


@pytest.mark.gpu
def test_bench_cuda(tmp_path):
    """The CUDA path on the tiny backend: events, peak memory, the occupancy grid, half precision,
    the memory cap, TF32, channels_last, no-grid and dense samplers."""
    from db3d.nerf.render import nerfacc_cuda_available

    cfg = small_cfg(device="cuda", precision="fp16")
    variants = [Variant("base", Options(), rows=ROW_KEYS),
                Variant("bf16", Options(precision="bf16"), rows=("db", "ref", "unet", "sds")),
                Variant("mem24", Options(memlimit=24, tf32=True, channels_last=True, grad_ckpt=True),
                        rows=("db", "unet", "sds")),
                Variant("nogrid", Options(occgrid="off"), rows=("sds",)),
                Variant("dense", Options(occgrid="dense", deterministic=False), rows=("sds",))]
    rows = run_bench(cfg, tmp_path / "gpu.tsv", variants=variants, repeats=2, warmup=1, sds_block=4, sds_repeats=2,
                     sds_resolutions=(16, 32))
    bad = [(r.variant, r.row, r.note) for r in rows if r.status != "ok"]
    assert not bad, bad
    for r in rows:
        if r.row != "backend_build":
            assert r.peak_alloc_gib and r.peak_alloc_gib > 0 and r.fits_24gib == "yes", r
    precisions = {r.variant: r.precision for r in rows}
    assert precisions["base"] == "fp16" and precisions["bf16"] == "bf16"
    sds = {r.variant: r.note for r in rows if r.row == "sds_step" and r.res == 16}
    if nerfacc_cuda_available():
        assert "occupancy grid" in sds["base"] and "no grid" in sds["nogrid"]
    assert "dense torch sampler" in sds["dense"]
    md = (tmp_path / "gpu.md").read_text()
    assert torch.cuda.get_device_name() in md and "allocator capped" in md


# ---- compilation (compile_unet): what the stages compile is what the bench times -----------------------

def test_compile_models_computes_the_same_and_undoes(monkeypatch):
    """`DiffusionBackend.compile_models` routes the UNet (and VAE encoder) calls through
    torch.compile (here its `eager` backend: dynamo tracing, no code generation) without changing
    the results, also with gradients; `uncompile_models` restores the eager modules."""
    from db3d.diffusion import build_backend

    b = build_backend(small_cfg())
    x = torch.randn(1, b.model_channels, b.latent_size, b.latent_size)
    cond, uncond = b.encode_text(["a sks dog"]), b.encode_text([""])
    img = torch.rand(1, 3, 16, 16)

    def run():
        with torch.no_grad():
            eps = b.predict_noise(x, 500, cond, uncond, 7.5)
        r = img.clone().requires_grad_(True)
        z = b.encode_images(r)
        z.square().sum().backward()
        return eps, z.detach(), r.grad

    want = run()
    notes = b.compile_models("default", cudagraphs=True, vae_encoder=True, backend="eager")
    assert set(b._compiled) == {"unet"}  # no CUDA graphs on CPU
    assert any("unet torch.compile" in n for n in notes) and any("vae encoder" in n for n in notes)
    assert b.vae.encoder._compiled_call_impl is not None
    compiled, used = b._compiled["unet"], []
    b._compiled["unet"] = lambda *a, **k: used.append(torch.is_grad_enabled()) or compiled(*a, **k)
    got = run()
    for w, g in zip(want, got):
        torch.testing.assert_close(g, w)
    assert used == [False]  # the guidance call went through the compiled UNet
    b.uncompile_models()
    assert not b._compiled and b.vae.encoder._compiled_call_impl is None
    torch._dynamo.reset()


def test_vae_options_apply_and_undo():
    """Variants `vae_attention` / `vae_autocast` change the backend inside `applied` and restore it."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    from db3d.bench.runner import applied
    from db3d.diffusion import build_backend

    b = build_backend(small_cfg())
    kinds = lambda: {type(p) for p in b.vae.attn_processors.values()}  # noqa: E731
    assert kinds() == {AttnProcessor} and b.vae_autocast is False
    with applied(b, Options(vae_attention="sdpa", vae_autocast=True), b.device):
        assert kinds() == {AttnProcessor2_0} and b.vae_autocast is True
    assert kinds() == {AttnProcessor} and b.vae_autocast is False
    with applied(b, Options(), b.device):  # unset options leave the backend's choice
        assert kinds() == {AttnProcessor} and b.vae_autocast is False


def test_stages_compile_what_the_bench_base_runs(monkeypatch):
    """compile_unet: true makes `stages._backend` call compile_models(**STAGE_COMPILE), and the
    bench's base variant of such a config applies the same options (and the config's kernels)."""
    import argparse

    from db3d import stages
    from db3d.bench.args import add_arguments, config_options, variants_from_args
    from db3d.diffusion.base import DiffusionBackend

    seen = []
    monkeypatch.setattr(DiffusionBackend, "compile_models", lambda self, *a, **k: seen.append((a, k)) or [])
    cfg = small_cfg(compile_unet="true", deterministic="false")
    stages._backend(cfg)
    assert seen == [((), stages.STAGE_COMPILE)]
    parse = lambda *argv: add_arguments(argparse.ArgumentParser()).parse_args(["--out", "x.tsv", *argv])  # noqa: E731
    base = variants_from_args(parse(), config_options(cfg, stages.STAGE_COMPILE))[0].options
    assert base.deterministic is False
    assert (base.compile, base.cudagraphs, base.compile_vae) == (stages.STAGE_COMPILE["unet_mode"] or "",
                                                                 stages.STAGE_COMPILE["cudagraphs"],
                                                                 stages.STAGE_COMPILE["vae_encoder"])
    off = variants_from_args(parse("--compile", "0"), config_options(cfg, stages.STAGE_COMPILE))[0].options
    assert (off.compile, off.cudagraphs, off.compile_vae, off.deterministic) == ("", "", False, False)
    plain = variants_from_args(parse(), config_options(small_cfg(), stages.STAGE_COMPILE))[0].options
    assert plain == Options(deterministic=small_cfg()["deterministic"])
    v = parse_variant("cg compile=1 cudagraphs=1 compile_vae=1", plain, ROW_KEYS).options
    assert v.cudagraphs == "direct" and v.compile_vae and "cudagraphs=direct compile_vae=1" in v.describe()
    assert parse_variant("ro cudagraphs=compile", plain, ROW_KEYS).options.cudagraphs == "compile"
    assert parse_variant("ro cudagraphs=reduce-overhead", plain, ROW_KEYS).options.cudagraphs == "compile"
    with pytest.raises(ValueError):
        parse_variant("x cudagraphs=maybe", plain, ROW_KEYS)
    assert base.cudagraphs == "direct"  # what compile_unet: true does
    ro = variants_from_args(parse("--cudagraphs", "compile"), config_options(cfg, stages.STAGE_COMPILE))[0].options
    assert ro.cudagraphs == "compile"
    eager = parse_variant("eager compile=0", base, ROW_KEYS).options  # nothing compiled
    assert (eager.compile, eager.cudagraphs, eager.compile_vae, eager.deterministic) == ("", "", False, False)


def test_stagecheck_summary_and_compare():
    """`db3d.bench.stagecheck`: per-iteration stamps -> steady rate and warm-up; two runs compared."""
    from db3d.bench.stagecheck import compare, summarise

    def fake(first_ms, steady_ms, sds_scale):
        n = 300
        dts = [first_ms / 1e3] + [steady_ms / 1e3] * (n - 1)
        stamps, t = [], 10.0
        for d in dts:
            t += d
            stamps.append(t)
        recs = [{"step": i, "sds": sds_scale * (1 + i % 3), "loss": 1.0, "t": [500 + i], "shading": "albedo"}
                for i in range(n)]
        losses = {"steps": recs, "perf": {"render_resolution": 64, "iters_per_s": 1.0}}
        return summarise({"compile_unet": False}, "stage1", losses, stamps, 0.0, 10.0, t + 1)

    a, b = fake(200, 100, 1.0), fake(30_000, 50, 1.01)
    assert math.isclose(a["steady_ms_median"], 100) and math.isclose(b["steady_iters_per_s"], 20)
    assert math.isclose(b["first_iters_excess_s"], 30.2 - 0.25, rel_tol=1e-6)
    c = compare(a, b)
    assert math.isclose(c["speedup_steady"], 2.0) and c["same_timesteps_and_shading"]
    assert math.isclose(c["sds_rel_diff_median_first10"], 0.01, rel_tol=1e-6) and c["finite"] == [True, True]
    assert math.isclose(c["warmup_excess_s"], 29.95 - 0.1, rel_tol=1e-6)
