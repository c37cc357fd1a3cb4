"""The Snakemake graph: lint, dry runs (default, ablations, profiles) and the cache keys."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from db3d import variants as V
from db3d import workflow as wf
from db3d.config import load_config, parse_setting
from db3d.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
# the sweep's rows, read from its table so that re-gridding it does not break the counts below
RECON_WEIGHTS = (REPO / "ablations" / "recon_weight.tsv").read_text().split()[1:]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def snakemake(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    return subprocess.run(SNAKEMAKE + list(args), cwd=cwd, capture_output=True, text=True, env=env, timeout=300)


def test_lint_is_clean():
    res = snakemake("--lint")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Congratulations, your workflow is in a good condition!" in res.stdout + res.stderr


@pytest.mark.parametrize("track", [None, "config/tiny.yaml"], ids=["synthetic-default", "tiny"])
def test_dry_run_builds_every_stage_for_every_variant(track):
    extra = ("--configfile", track) if track else ()
    res = snakemake("reports/main.pdf", "-n", "--forceall", "--quiet", "rules", *extra)
    assert res.returncode == 0, res.stderr
    out = res.stdout + res.stderr
    cfg = load_config([REPO / "config/config.yaml"] + ([REPO / track] if track else []))
    subjects, seeds, variants = wf.subjects(cfg), len(cfg["seeds"]), cfg["variants"]
    n_runs = len(subjects) * cfg["dataset"]["prompts_per_subject"] * seeds
    counts = {line.split()[0]: int(line.split()[1]) for line in out.splitlines()
              if len(line.split()) == 2 and line.split()[1].isdigit()}
    synthetic = cfg["dataset"]["kind"] == "synthetic"
    assert counts["synthetic_subject" if synthetic else "dataset"] == len(subjects)
    assert counts.get("toy_prior", 0) == (cfg["backend"] == "toy")
    assert counts["dreambooth"] == len(subjects) * seeds
    for rule in ("nerf_stage1", "pseudo_views", "dreambooth_multiview", "nerf_stage3"):
        assert counts[rule] == n_runs, rule
    baselines = {V.VARIANTS[v].judged for v in variants} & set(V.baseline_stages())
    assert baselines >= ({"naive", "dreamfusion"} if synthetic else {"naive", "latent_nerf"})
    assert counts["nerf_baseline"] == len(baselines) * n_runs
    assert counts["evaluate"] == len(variants) * n_runs
    # the reference rows (db3d.variants.REFERENCES): one job per reference, subject and seed, synthetic only
    assert counts.get("reference", 0) == (len(V.REFERENCES) * len(subjects) * seeds if synthetic else 0)
    assert counts.get("collect_reference", 0) == synthetic
    assert counts["report"] == 1


def test_ablation_reuses_upstream_stages():
    """The recon-weight sweep adds stage-3 NeRFs and evaluations, never DreamBooth or stage 1."""
    base = snakemake("reports/main.pdf", "-n", "--forceall", "--quiet", "rules")
    abl = snakemake("reports/main.pdf", "-n", "--forceall", "--config", "ablations=[recon_weight]",
                    "--quiet", "rules")
    assert abl.returncode == 0, abl.stderr

    def counts(res):
        return {line.split()[0]: int(line.split()[1]) for line in (res.stdout + res.stderr).splitlines()
                if len(line.split()) == 2 and line.split()[1].isdigit()}

    b, a = counts(base), counts(abl)
    for rule in ("dreambooth", "nerf_stage1", "pseudo_views", "dreambooth_multiview", "class_priors"):
        assert a[rule] == b[rule], rule
    weights = len(RECON_WEIGHTS)
    assert a["nerf_stage3"] == b["nerf_stage3"] + weights * b["nerf_stage3"]
    # only the variant the weight reaches (dreambooth3d) is evaluated again in the new cells
    assert a["evaluate"] == b["evaluate"] + weights * b["nerf_stage3"]


@pytest.mark.parametrize("profile", ["default", "slurm"])
def test_profiles_plan_the_whole_workflow(profile):
    res = snakemake("reports/main.pdf", "-n", "--profile", f"profiles/{profile}", "--forceall")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "report" in res.stdout


def test_kubernetes_profile_plans_through_its_storage_plugin():
    # The pods share files through the fs storage plugin's volume, which does not exist here, so
    # plan a target with no inputs: this still loads the executor, the storage plugin and the profile.
    res = snakemake("runs/seed~0/config.json", "-n", "--profile", "profiles/kubernetes", "--forceall")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "/mnt/db3d/work/runs/seed~0/config.json" in res.stdout + res.stderr


def test_stage_setting_keeps_only_what_a_stage_depends_on():
    setting = "recon_weight~0.1/partial_steps~50/seed~2"
    assert wf.stage_setting(setting, "dreambooth") == "partial_steps~50/seed~2"
    assert wf.stage_setting(setting, "stage1") == "partial_steps~50/seed~2"
    assert wf.stage_setting(setting, "stage3") == "recon_weight~0.1/partial_steps~50/seed~2"
    assert wf.stage_setting("noise_level~0.7/seed~0", "stage1") == "seed~0"
    assert wf.stage_setting("noise_level~0.7/seed~0", "stage2") == "noise_level~0.7/seed~0"
    assert wf.stage_setting("multiview_steps~0/seed~0", "stage2") == "seed~0"
    assert wf.stage_setting("multiview_steps~0/seed~0", "stage3") == "multiview_steps~0/seed~0"


def test_rule_config_holds_only_the_rules_keys_and_the_setting():
    cfg = load_config()
    got = json.loads(wf.stage_rule_config(cfg, "recon_weight~0.25/seed~3", "stage3"))
    assert got["stage3"]["recon_weight"] == 0.25 and got["seed"] == 3
    assert "report" not in got and "eval" not in got
    priors = json.loads(wf.rule_config(cfg, None, wf.STAGE_KEYS["class_priors"]))
    assert set(priors["dreambooth"]) == {"num_class_images", "class_sample_steps"}


def test_every_rule_is_keyed_by_the_toy_prior():
    """backend toy: the prior's pinned sha256 and its recipe are in every rule's params, so another
    prior re-runs each stage instead of reusing results made with the old one."""
    cfg = load_config()
    assert cfg["backend"] == "toy"
    base = {stage: wf.stage_rule_config(cfg, "seed~0", stage) for stage in wf.STAGE_KEYS}
    base["evaluate"] = wf.rule_config(cfg, "seed~0", wf.EVAL_KEYS)
    other = dict(cfg, models={**cfg["models"], "toy_sha256": "ab" * 32})
    retrained = dict(cfg, toy_prior={**cfg["toy_prior"], "steps": cfg["toy_prior"]["steps"] + 1})
    for stage, params in base.items():
        keys = json.loads(params)
        assert keys["models"]["toy_sha256"] == cfg["models"]["toy_sha256"] and "toy_prior" in keys, stage
        again = (wf.rule_config(c, "seed~0", wf.EVAL_KEYS) if stage == "evaluate" else
                 wf.stage_rule_config(c, "seed~0", stage) for c in (other, retrained))
        assert all(p != params for p in again), stage
    tiny = dict(cfg, backend="tiny")  # no toy prior: its recipe is not a key
    assert "toy_prior" not in json.loads(wf.stage_rule_config(tiny, "seed~0", "dreambooth"))


def test_ablation_settings_cross_seeds():
    cfg = dict(load_config(), seeds=[0, 1], ablations=["recon_weight"])
    cells = wf.ablation_settings(cfg, REPO / "ablations")
    assert len(cells) == 2 * len(RECON_WEIGHTS)
    assert "recon_weight~0.1/seed~1" in cells
    assert parse_setting(cells[0]) == {"recon_weight": "0.0", "seed": "0"}


def test_bad_config_value_is_one_line_naming_the_key(tmp_path):
    cfg = yaml.safe_load((REPO / "config/config.yaml").read_text())
    cfg["stage3"]["recon_weight"] = -1
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match=r"stage3\.recon_weight: -1 is less than the minimum"):
        load_config(path)
    res = snakemake("-n", "--configfile", str(path))
    assert res.returncode != 0
    assert "recon_weight" in res.stdout + res.stderr


def test_config_strings_are_parsed_by_the_schema():
    """Snakemake's --config leaves every value inside a list or mapping a string (YAML BaseLoader);
    the schema says what each is. Strings the schema asks for stay strings."""
    from db3d.config import coerce_to_schema

    given = {"seeds": ["0", "1", "2"], "deterministic": "false", "device": 0,
             "dataset": {"min_images": "4", "subjects": "all", "source": "123"},
             "sds": {"t_range": ["0.1", "0.9"], "guidance_scale": "7.5"}, "dreambooth": {"learning_rate": "1e-4"},
             "stage1": {"iters": "20.0"}, "report": {"title": "2026"}, "nerf": {"hidden_dim": "abc"}}
    assert coerce_to_schema(given) == {
        "seeds": [0, 1, 2], "deterministic": False, "device": "0",
        "dataset": {"min_images": 4, "subjects": "all", "source": "123"},
        "sds": {"t_range": [0.1, 0.9], "guidance_scale": 7.5}, "dreambooth": {"learning_rate": 1e-4},
        "stage1": {"iters": 20}, "report": {"title": "2026"}, "nerf": {"hidden_dim": "abc"}}  # left for validate


@pytest.mark.parametrize("value,error", [
    ("seeds=[0,1]", None),  # the README's form: was "'0' is not of type 'integer'"
    ('sds={"guidance_scale": 7.5}', None),
    ("seeds=[0,-1]", "config: seeds.1: -1 is less than the minimum of 0"),
    ('dataset={"prompts_per_subject": -1}', "dataset.prompts_per_subject: -1 is less than the minimum of 1"),
    ('nerf={"hidden_dim": "abc"}', "nerf.hidden_dim: 'abc' is not of type 'integer'"),
    ("seedz=[0]", "unknown key(s) 'seedz' (did you mean 'seeds'?)"),  # was the whole schema, 363 lines
])
def test_snakemake_config_values_are_checked_in_one_line(value, error):
    res = snakemake("-n", "--quiet", "rules", "--config", value)
    if error is None:
        assert res.returncode == 0, res.stderr
        return
    errors = [line for line in res.stderr.splitlines() if "rror" in line or "Traceback" in line]
    assert res.returncode == 1 and errors == [errors[0]] and errors[0].startswith("db3d: error: "), res.stderr
    assert error in errors[0] and "fix it" in errors[0]


def test_a_bad_seed_is_one_line(capsys):
    from db3d.cli import main

    assert main(["toy-prior", "--set", "seed=abc", "--out", "unused"]) == 2  # was a ValueError traceback
    err = capsys.readouterr().err.strip()
    assert err == "db3d: error: seed='abc': a seed is a non-negative integer, e.g. --set seed=1"
    with pytest.raises(ConfigError, match="setting seed~-1: seed='-1'"):
        wf.resolved(load_config(), "seed~-1")


def test_an_unknown_prompt_id_is_refused_while_planning():
    res = snakemake("-n", "runs/seed~0/mug_red/nosuch/stage1/nerf.pt")
    out = res.stdout + res.stderr
    assert res.returncode != 0 and "No rule to produce runs/seed~0/mug_red/nosuch/stage1/nerf.pt" in out
    assert "Job stats" not in out


def test_set_without_equals_is_one_line_naming_the_argument(capsys):
    from db3d.cli import main
    from db3d.config import parse_overrides

    assert parse_overrides(["stage1.iters=7", "report.title=a=b"]) == {"stage1.iters": "7", "report.title": "a=b"}
    with pytest.raises(ConfigError, match=r"--set 'stage1.iters': expected KEY=VALUE"):
        parse_overrides(["stage1.iters"])
    assert main(["toy-prior", "--set", "stage1.iters", "--out", "unused"]) == 2  # fails before any training
    err = capsys.readouterr().err.strip()
    assert "expected KEY=VALUE" in err and len(err.splitlines()) == 1
    from db3d.bench import profile, stagecheck
    from db3d.errors import report_errors

    for tool in (profile, stagecheck):  # the python -m db3d.bench.* tools report it the same way
        assert report_errors(lambda: tool.main(["--set", "stage1.iters"])) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("db3d: error: --set 'stage1.iters'") and len(err.splitlines()) == 1


def test_unknown_ablation_column_is_an_error():
    with pytest.raises(ConfigError, match="unknown config key 'recon_wieght'"):
        wf.resolved(load_config(), "recon_wieght~1/seed~0")


def test_config_files_merge_in_order_like_snakemake():
    cfg = load_config([REPO / "config/config.yaml", REPO / "config/paper.yaml"], {"stage1.iters": "7"})
    assert cfg["backend"] == "sd" and cfg["dreambooth"]["full_steps"] == 800
    assert cfg["stage1"]["iters"] == 7
    assert cfg["sds"]["t_range"] == load_config()["sds"]["t_range"]  # kept from the base


@pytest.mark.parametrize("track", ["default", "paper"])
def test_plan_is_unchanged(track):
    """The job list of a dry run, every stage's cache key and rule config per cell, the evaluation
    targets and the report's inputs are those main's code planned before the experiment was declared
    in db3d.variants (tests/data/plan_before.json, tests/plan_snapshot.py), for the variants and
    stages that existed then. With the config's own variants (dreamfusion added to the default
    study since) the dry run plans the same jobs plus only jobs of the new variants' stages."""
    import plan_snapshot

    from db3d import variants as V

    before = json.loads((REPO / "tests/data/plan_before.json").read_text())[track]
    now = plan_snapshot.snapshot(track, stages=sorted(before["stages"]), variants=before["variants"])
    assert set(now) == set(before)
    for key in sorted(before):
        if key == "stages":
            for stage in sorted(before[key]):
                diff = [s for s in before[key][stage] if before[key][stage][s] != now[key][stage].get(s)]
                assert not diff, (stage, diff[:3], [now[key][stage].get(s) for s in diff[:3]],
                                  now["stage_configs_main"].get(stage))
        else:
            assert now[key] == before[key], key
    files, ablations = plan_snapshot.TRACKS[track]
    variants = plan_snapshot._snakemake_config(files)["variants"]
    added = [v for v in variants if v not in before["variants"]]
    if not added or not isinstance(before["jobs"], list):
        return
    jobs = set(plan_snapshot.dry_run_jobs(files, variants, ablations[-1:]))
    assert set(before["jobs"]) <= jobs
    new_dirs = {f"/{V.STAGES[s].dir}/" for v in added for s in V.VARIANTS[v].stages} | {f"/eval/{v}/" for v in added}
    stray = [j for j in jobs - set(before["jobs"]) if not any(d in j for d in new_dirs)]
    assert not stray, stray[:5]


@pytest.mark.parametrize("column", ["eval__num_views", "dataset__num_photos", "toy_prior__steps", "precision"])
def test_ablation_column_no_evaluated_stage_reads_is_refused(tmp_path, column):
    """A sweep of a key no stage of the variants depends on would reuse every NeRF and evaluate
    nothing: refused at planning, one line naming the table and the column."""
    cfg = yaml.safe_load((REPO / "config/config.yaml").read_text())
    (tmp_path / "sweep.tsv").write_text(f"{column}\n{'fp16' if column == 'precision' else 4}\n")
    with pytest.raises(ConfigError, match=rf"sweep.tsv: column {column} \(.*\) is read by no stage") as e:
        wf.checked_ablation_settings(dict(cfg, ablations=["sweep"]), tmp_path)
    assert "\n" not in str(e.value)


def test_ablation_column_outside_the_variants_chains_is_refused_by_the_snakefile():
    # recon_weight reaches stage 3 only: with variants [naive] none of its cells would be evaluated
    res = snakemake("reports/main.pdf", "-n", "--config", "variants=[naive]", "ablations=[recon_weight]")
    assert res.returncode != 0
    err = [line for line in (res.stdout + res.stderr).splitlines() if line.startswith("db3d: error:")]
    assert len(err) == 1 and "column recon_weight (stage3.recon_weight) is read by no stage" in err[0], res.stderr
    ok = snakemake("reports/main.pdf", "-n", "--config", "variants=[dreambooth3d]", "ablations=[recon_weight]")
    assert ok.returncode == 0, ok.stderr


def test_latent_variant_on_a_pixel_backend_is_refused_at_planning():
    res = snakemake("reports/main.pdf", "-n", "--config", "variants=[dreambooth3d,latent_nerf]")  # toy: pixels
    assert res.returncode != 0
    err = [line for line in (res.stdout + res.stderr).splitlines() if line.startswith("db3d: error:")]
    assert len(err) == 1 and "latent_nerf needs a latent-space backend, and backend toy works in pixel" in err[0]
    cfg = load_config([REPO / "config/config.yaml", REPO / "config/tiny.yaml"])
    wf.check_variants(cfg)  # tiny in latent space runs all four
    with pytest.raises(ConfigError, match="latent_nerf needs a latent-space backend, and backend tiny works in pixel"):
        wf.check_variants(dict(cfg, models=dict(cfg["models"], tiny_space="pixel")))
    with pytest.raises(ConfigError, match=r"variants: unknown nope \(known: "):
        wf.check_variants(dict(cfg, variants=["dreambooth3d", "nope"]))
    with pytest.raises(ConfigError, match=r"variants: unknown nope \(known: "):  # the commands' loader too
        load_config(None, {"variants": "[dreambooth3d, nope]"})


def test_every_registered_backend_model_key_reaches_every_rule():
    """A backend registers its config key; every rule's config carries it (no silent code default)."""
    from db3d.diffusion import registry

    specs = registry.backends()
    assert set(specs) == {"sd", "if", "tiny", "toy"}
    for spec in specs.values():
        assert spec.config_key in wf.COMMON_KEYS and set(spec.also_keys) <= set(wf.COMMON_KEYS)
    cfg = load_config()
    models = ("sd", "if", "tiny_space", "toy", "toy_sha256")
    for stage in wf.STAGE_KEYS:
        got = json.loads(wf.stage_rule_config(cfg, "seed~0", stage))
        assert {k: got["models"][k] for k in models} == {k: cfg["models"][k] for k in models}
        # the toy prior's recipe reaches a rule only when toy is the backend (its selected_keys)
        assert got["toy_prior"] == cfg["toy_prior"]
        assert "toy_prior" not in json.loads(wf.stage_rule_config(dict(cfg, backend="tiny"), "seed~0", stage))
    with pytest.raises(ConfigError, match="backend 'nope' is not registered"):
        registry.find("nope")
    # the config names a backend the registry knows (the schema lists none): refused in one line
    with pytest.raises(ConfigError, match=r"backend 'sdxl' is not registered \(known: if, sd, tiny, toy\)"):
        load_config(overrides={"backend": "sdxl"})


def test_dreamfusion_is_the_base_model_without_the_subject():
    """The DreamFusion reference: no DreamBooth upstream (its cache key ignores every DreamBooth
    knob), no --dreambooth in its job, and a prompt without the subject's token."""
    from types import SimpleNamespace

    from db3d.data.prompts import get_prompt

    assert not any(k.startswith("dreambooth") for k in wf.STAGE_KEYS["dreamfusion"])
    assert wf.stage_setting("partial_steps~50/seed~1", "dreamfusion") == "seed~1"
    assert wf.stage_setting("guidance_scale~20/seed~1", "dreamfusion") == "guidance_scale~20/seed~1"
    w = SimpleNamespace(setting="seed~0", subject="mug_red", prompt_id="plain")
    assert wf.guide_input(w, "dreamfusion") == [] and wf.guide_option([]) == ""
    assert wf.guide_option(wf.guide_input(w, "naive")) == "--dreambooth runs/seed~0/mug_red/dreambooth/full.safetensors"
    assert V.VARIANTS["dreamfusion"].stages == ("dreamfusion",)
    assert not V.STAGES["dreamfusion"].personalised and V.STAGES["naive"].personalised
    p = get_prompt(REPO / "config/synthetic/prompts.tsv", REPO / "config/synthetic/subjects.tsv", "mug_red", "blue")
    assert p.text == "a blue sks mug" and p.generic_text == "a blue mug"
    res = snakemake("runs/seed~0/mug_red/plain/dreamfusion/nerf.pt", "-n", "-p", "--forceall")
    assert res.returncode == 0, res.stderr
    cmd = [line for line in res.stdout.splitlines() if "python -m db3d nerf --stage dreamfusion" in line]
    assert cmd and "--dreambooth" not in cmd[0], res.stdout[-2000:]
    assert "rule dreambooth:" not in res.stdout  # nothing personalised upstream
