"""The jobs-per-GPU table of scripts/device_packing.sh: the same GPU graph run with
`device_slots` 1 and with the default, wall time and memory each (issue 17 item 5; no torch).

    python -m db3d.bench.packing RUNS.tsv [RUNS.tsv ...] --out reports/bench/packing [--note ...]

Each RUNS.tsv row is one run (or one call of a run resumed over calls: rows of the same run are
summed) as the script writes it: slots, calls, graph_wall_s (Snakemake's time), jobs, job_wall_s
(the sum of the jobs' walls), peak_job_gib (the largest peak reserved by one job, db3d.jobperf),
peak_device_gib (the GPU's used memory sampled by nvidia-smi every second: all jobs together),
complete (1 when the graph finished). The table says the speed-up of each run over slots 1.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from ..io import atomic_path

FIELDS = ("slots", "calls", "graph_wall_s", "jobs", "job_wall_s", "peak_job_gib", "peak_device_gib", "complete")


def _num(v: str) -> float | None:
    return float(v) if v not in ("", "n/a", None) else None


def read_runs(paths: list[Path]) -> dict[int, dict]:
    """slots -> the run's totals (calls summed, peaks maxed; the last call's job count)."""
    runs: dict[int, dict] = {}
    for path in paths:
        with open(path, newline="") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                s = int(row["slots"])
                r = runs.setdefault(s, {"slots": s, "calls": 0, "graph_wall_s": 0.0, "jobs": 0,
                                        "job_wall_s": 0.0, "peak_job_gib": None, "peak_device_gib": None,
                                        "complete": 0})
                r["calls"] += int(row.get("calls") or 1)
                r["graph_wall_s"] += float(row["graph_wall_s"])
                r["jobs"] = int(row["jobs"])  # the logs folder is the run's: the last call counts all
                r["job_wall_s"] = float(row["job_wall_s"])
                for k in ("peak_job_gib", "peak_device_gib"):
                    v = _num(row[k])
                    if v is not None:
                        r[k] = v if r[k] is None else max(r[k], v)
                r["complete"] = max(r["complete"], int(row["complete"]))
    return runs


def markdown(runs: dict[int, dict], title: str, notes: list[str] = ()) -> str:
    base = runs.get(1)
    head = ["jobs per GPU (device_slots)", "graph complete", "device calls", "jobs", "graph wall s",
            "speed-up vs 1", "sum of job walls s", "peak reserved GiB (one job)", "peak used GiB (GPU)"]
    out = [f"# {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in sorted(runs):
        r = runs[s]
        up = (f"{base['graph_wall_s'] / r['graph_wall_s']:.2f}x"
              if base and base["complete"] and r["complete"] and r["graph_wall_s"] else "")
        pk = lambda v: "" if v is None else f"{v:.2f}"  # noqa: E731
        out.append("| " + " | ".join([str(s), "yes" if r["complete"] else "NO", str(r["calls"]), str(r["jobs"]),
                                      f"{r['graph_wall_s']:.1f}", up, f"{r['job_wall_s']:.1f}",
                                      pk(r["peak_job_gib"]), pk(r["peak_device_gib"])]) + " |")
    out += [""] + [f"- {n}" for n in notes] + [
        "", "graph wall = Snakemake's time for the whole graph (planning and job launches included; summed "
        "over the calls of a resumed run); speed-up only between complete runs; peak used = nvidia-smi's "
        "memory.used of the GPU, every second (all the jobs sharing it, CUDA contexts included).", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m db3d.bench.packing", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", type=Path, nargs="+", help="RUNS.tsv files of scripts/device_packing.sh")
    p.add_argument("--out", type=Path, required=True, help="<out>.tsv and <out>.md are written")
    p.add_argument("--title", default="Jobs per GPU through Snakemake")
    p.add_argument("--note", action="append", default=[])
    args = p.parse_args(argv)
    missing = [str(r) for r in args.runs if not r.is_file()]
    if missing:
        print(f"db3d: error: no runs table {', '.join(missing)}; run scripts/device_packing.sh first", file=sys.stderr)
        return 2
    runs = read_runs(args.runs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out.with_suffix(".tsv")) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, delimiter="\t")
        w.writeheader()
        for s in sorted(runs):
            w.writerow({k: ("" if runs[s][k] is None else runs[s][k]) for k in FIELDS})
    text = markdown(runs, args.title, args.note)
    with atomic_path(args.out.with_suffix(".md")) as tmp:
        tmp.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
