"""The per-rule table of a workflow run, read from its jobs' own logs (no torch).

Every `python -m db3d` job ends its log with one `db3d.jobperf` line (wall, start-up, the main
loop's warm-up and steady rate, peak GPU memory, NeRF samplers). This reads those lines from a
`logs/` folder, in the order the jobs started, into `<out>.tsv` + `<out>.md` (written atomically):

    python -m db3d.bench.joblog logs --out reports/bench/e2e_paper --title "..." [--graph-wall-s S]
                                [--fail-on-torch-sampler]

`--fail-on-torch-sampler` exits 1 when any job rendered with the dense torch sampler on a CUDA
device (nerfacc's CUDA ops missing: db3d.nerf.render's fallback), or when a log has no job line
(the job died before logging it) or a job failed: the GPU end-to-end check (scripts/device_e2e.sh).
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..io import atomic_path
from ..jobperf import JOB_LINE_TAG

FALLBACK_WARNING = "sampler auto: nerfacc's CUDA ops are not usable"  # db3d.nerf.render


@dataclass
class JobRow:
    job: str                      # what the job was (`jobperf.note(job=...)`, else the command)
    log: str                      # the log's path below the logs folder (the rule's `log:`)
    status: str                   # ok | error | no job line
    wall_s: float | None = None
    startup_s: float | None = None
    loop: str = ""
    iters: int | None = None
    loop_s: float | None = None
    warmup_s: float | None = None
    steady_it_s: float | None = None
    after_loop_s: float | None = None   # wall - start-up - loop: final writes, turntable, exit
    peak_reserved_gib: float | None = None
    samplers: str = ""
    fallback_warnings: int = 0
    started: float | None = None

    @property
    def torch_on_gpu(self) -> bool:
        return "torch@cuda" in self.samplers.split(",") or self.fallback_warnings > 0


def parse_log(path: Path, root: Path) -> JobRow:
    text = path.read_text(errors="replace")
    lines = text.splitlines()
    warnings = sum(FALLBACK_WARNING in ln for ln in lines)
    rel = str(path.relative_to(root))
    tagged = [ln for ln in lines if JOB_LINE_TAG in ln]
    if not tagged:
        return JobRow(job="?", log=rel, status="no job line", fallback_warnings=warnings)
    d = json.loads(tagged[-1].split(JOB_LINE_TAG, 1)[1])
    lp = d.get("loop") or {}
    after = None
    if d.get("startup_s") is not None and lp.get("loop_s") is not None:
        after = d["wall_s"] - d["startup_s"] - lp["loop_s"]
    return JobRow(job=d.get("job") or d["command"], log=rel, status=d["status"], wall_s=d["wall_s"],
                  startup_s=d.get("startup_s"), loop=lp.get("name", ""), iters=lp.get("iters"),
                  loop_s=lp.get("loop_s"), warmup_s=lp.get("warmup_s"), steady_it_s=lp.get("steady_it_s"),
                  after_loop_s=after, peak_reserved_gib=d.get("peak_reserved_gib"),
                  samplers=",".join(d.get("samplers", [])), fallback_warnings=warnings, started=d.get("started"))


def read_logs(logs: Path) -> list[JobRow]:
    """Every job log below `logs`, in the order the jobs started (logs without a job line last)."""
    rows = [parse_log(p, logs) for p in sorted(Path(logs).rglob("*.log"))]
    return sorted(rows, key=lambda r: (r.started is None, r.started or 0.0, r.log))


def problems(rows: list[JobRow]) -> list[str]:
    """What makes a GPU end-to-end run fail: a job on the torch sampler on CUDA, a failed job,
    a log without its job line."""
    out = []
    for r in rows:
        if r.torch_on_gpu:
            out.append(f"{r.log}: rendered with the dense torch sampler on a CUDA device "
                       f"(nerfacc's CUDA ops did not load; see the warning in that log)")
        if r.status != "ok":
            out.append(f"{r.log}: {r.status}")
    return out


def _fmt(v, digits: int = 1) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def markdown(rows: list[JobRow], title: str, graph_wall_s: float | None = None, notes: list[str] = ()) -> str:
    head = ["job", "log", "wall s", "start-up s", "loop", "iters", "warm-up s", "steady it/s", "ms/it",
            "after loop s", "peak reserved GiB", "sampler", "status"]
    out = [f"# {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ms = 1000.0 / r.steady_it_s if r.steady_it_s else None
        out.append("| " + " | ".join([
            r.job, f"`{r.log}`", _fmt(r.wall_s), _fmt(r.startup_s), r.loop, _fmt(r.iters), _fmt(r.warmup_s),
            _fmt(r.steady_it_s, 2), _fmt(ms), _fmt(r.after_loop_s), _fmt(r.peak_reserved_gib, 2),
            r.samplers, r.status]) + " |")
    walls = [r.wall_s for r in rows if r.wall_s is not None]
    starts = [r.startup_s for r in rows if r.startup_s is not None]
    peaks = [r.peak_reserved_gib for r in rows if r.peak_reserved_gib is not None]
    out += ["", f"- jobs: {len(rows)}; sum of job walls {_fmt(sum(walls))} s "
                f"({_minsec(sum(walls))}), of which start-up {_fmt(sum(starts))} s"]
    if graph_wall_s is not None:
        out.append(f"- the graph's wall (Snakemake from start to end, planning and job launches included): "
                   f"{_fmt(graph_wall_s)} s ({_minsec(graph_wall_s)})")
    if peaks:
        out.append(f"- largest peak reserved GPU memory of a job: {max(peaks):.2f} GiB "
                   f"({'within' if max(peaks) <= 24 else 'OVER'} 24 GiB, CUDA context not counted)")
    out += [f"- {n}" for n in notes]
    out += ["", "Columns (db3d.jobperf): wall = process start to exit; start-up = process start to the main "
            "loop's first step (imports, CUDA context, model build, data); warm-up = the loop's first "
            "marked stretch (>= 10 % of it: CUDA-graph capture, allocator growth); steady it/s = the rest of "
            "the loop, in-loop checkpoint writes included; after loop = final writes, turntable, exit.", ""]
    return "\n".join(out)


def _minsec(s: float) -> str:
    return f"{int(s // 60)}m{s % 60:04.1f}s"


def write_table(rows: list[JobRow], out: Path, title: str, graph_wall_s: float | None = None,
                notes: list[str] = ()) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    names = [f.name for f in fields(JobRow)]
    with atomic_path(out.with_suffix(".tsv")) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=names, delimiter="\t")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None else v) for k, v in asdict(r).items()})
    with atomic_path(out.with_suffix(".md")) as tmp:
        tmp.write_text(markdown(rows, title, graph_wall_s, notes))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m db3d.bench.joblog", description=__doc__.split("\n\n")[0])
    p.add_argument("logs", type=Path, help="the workflow's logs/ folder")
    p.add_argument("--out", type=Path, required=True, help="<out>.tsv and <out>.md are written")
    p.add_argument("--title", default="Per-rule table")
    p.add_argument("--graph-wall-s", type=float, default=None)
    p.add_argument("--note", action="append", default=[], help="a line for the table's notes (repeatable)")
    p.add_argument("--fail-on-torch-sampler", action="store_true")
    args = p.parse_args(argv)
    if not args.logs.is_dir():
        print(f"db3d: error: no logs folder {args.logs}; run the workflow first", file=sys.stderr)
        return 2
    rows = read_logs(args.logs)
    write_table(rows, args.out, args.title, args.graph_wall_s, args.note)
    print(markdown(rows, args.title, args.graph_wall_s, args.note))
    bad = problems(rows) if args.fail_on_torch_sampler else []
    for b in bad:
        print(f"FAIL: {b}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
