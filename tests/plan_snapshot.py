"""What the workflow plans for a config, as plain JSON: the job list of a dry run and, per cell and
stage, the cache key (`stage_setting`) and the config a rule sees (`stage_rule_config`).

`tests/data/plan_before.json` holds this snapshot taken from the code before the experiment was
declared in one module (db3d/variants.py, issue 19); `test_workflow.py::test_plan_is_unchanged`
takes it again from the current code and compares. Regenerate it only on purpose:
    python tests/plan_snapshot.py > tests/data/plan_before.json
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# track -> (extra config files, ablation tables planned with it: every table that config accepts)
TRACKS = {
    "default": ((), ["guidance_scale", "multiview_steps", "noise_level", "partial_steps_tiny",
                     "pseudo_views", "recon_weight"]),
    "paper": (("config/paper.yaml",), ["partial_steps", "recon_weight"]),
}
# The paper track's dry run plans its first two subjects only: all 30 are ~6600 jobs, over ten
# minutes of Snakemake's planning on a loaded 2-core machine. Its keys, targets and report inputs
# below are computed for every subject.
DRY_RUN_SUBJECTS = {"paper": 2}


def _snakemake_config(files: tuple[str, ...]) -> dict:
    """The config as the Snakefile sees it (files merged in order, no `seed` key)."""
    import yaml

    from db3d.config import merge_into

    cfg: dict = {}
    for f in ("config/config.yaml",) + tuple(files):
        merge_into(cfg, yaml.safe_load((REPO / f).read_text()))
    return cfg


def dry_run_jobs(files: tuple[str, ...], variants: list[str], ablations: list[str],
                 subjects: list[str] | None = None) -> list[str]:
    """`rule output...` of every job `snakemake -n --forceall reports/main.pdf` plans, sorted
    (`subjects`: those of dataset.subjects instead of the config's)."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    cmd = [sys.executable, "-m", "snakemake", "reports/main.pdf", "-n", "--forceall"]
    for f in files:
        cmd += ["--configfile", f]
    cmd += ["--config", f"variants={json.dumps(variants)}", f"ablations={json.dumps(ablations)}"]
    if subjects is not None:
        cmd += [f"dataset={json.dumps({'subjects': subjects})}"]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=3600)
    if res.returncode != 0:
        raise RuntimeError(res.stdout[-2000:] + res.stderr[-2000:])
    jobs, rule = [], None
    for line in res.stdout.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):$", line.strip())
        if m:
            rule = m.group(1)
            continue
        m = re.match(r"^output: (.*)$", line.strip())
        if m and rule is not None:
            jobs.append(f"{rule} {' '.join(sorted(m.group(1).split(', ')))}")
            rule = None
    return sorted(jobs)


def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def digest(items: list[str], limit: int = 400) -> list[str] | dict:
    """`items` itself when short; else its length, per-rule counts (jobs) and a sha256 of the
    sorted lines (the paper track plans ~10^4 files: too many to keep in the repo)."""
    items = sorted(items)
    if len(items) <= limit:
        return items
    counts: dict[str, int] = {}
    for it in items:
        head = it.split(" ", 1)[0] if " " in it else it.split("/")[-1]
        counts[head] = counts.get(head, 0) + 1
    return {"n": len(items), "counts": counts,
            "sha256": hashlib.sha256("\n".join(items).encode()).hexdigest()}


def snapshot(track: str, stages: list[str] | None = None, variants: list[str] | None = None,
             jobs: bool = True) -> dict:
    """The plan of one track. `stages`/`variants`: those of the recorded snapshot (the current code
    may declare more); default: all the code knows / the config's."""
    from db3d import workflow as wf

    files, ablations = TRACKS[track]
    config = _snakemake_config(files)
    variants = list(config["variants"]) if variants is None else list(variants)
    config = dict(config, variants=variants, ablations=ablations)
    wf.check_ablations(config, REPO / "ablations")
    settings = wf.main_settings(config)
    settings += [s for s in wf.ablation_settings(config, REPO / "ablations") if s not in settings]
    stages = sorted(wf.STAGE_KEYS) if stages is None else stages
    out = {
        "variants": variants,
        "ablations": ablations,
        "settings": settings,
        # per stage and cell: the cache key in clear, the rule's config (JSON) as a short hash
        "stages": {st: {s: [wf.stage_setting(s, st), short_hash(wf.stage_rule_config(config, s, st))]
                        for s in settings} for st in stages},
        "eval_config": {s: short_hash(wf.rule_config(config, s, wf.EVAL_KEYS)) for s in settings},
        # one cell's rule configs in clear, to see what changed when a hash differs
        "stage_configs_main": {st: json.loads(wf.stage_rule_config(config, settings[0], st)) for st in stages},
        "class_priors_config": wf.rule_config(config, None, wf.STAGE_KEYS["class_priors"]),
        "eval_targets": digest(wf.eval_targets(config, settings)),
        "report_inputs": digest(wf.report_inputs(config, settings)),
        "variant_nerfs": digest([wf.variant_nerf(s, "subj", "p0", v) for s in settings for v in variants]),
    }
    if jobs:
        # the dry run plans the main cells and one ablation (all of them on the paper track would
        # be ~10^4 jobs): the ablations' keys are compared above, cell by cell
        n = DRY_RUN_SUBJECTS.get(track)
        out["jobs"] = digest(dry_run_jobs(files, variants, ablations[-1:],
                                          wf.subjects(config)[:n] if n else None))
    return out


if __name__ == "__main__":
    os.chdir(REPO)
    json.dump({track: snapshot(track) for track in TRACKS}, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
