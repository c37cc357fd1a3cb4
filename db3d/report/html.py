"""`reports/main.html`: the report as one self-contained web page, from the same data.json as the PDF.

Every string and number is the PDF's (the same dict, inserted HTML-escaped); every image is embedded
as a data: URI, so the file opens anywhere, offline, with nothing beside it. Where the PDF shows a
turntable's frames side by side, the page shows the evaluation's animated turntable.gif. No script,
no external font or style sheet: nothing can fail to load.
"""
from __future__ import annotations

import base64
import html as _html
from pathlib import Path

MIME = {".png": "image/png", ".gif": "image/gif", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".mp4": "video/mp4"}
CSS = """
body{font-family:Georgia,'DejaVu Serif',serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222;
line-height:1.4;font-size:15px}
h1{font-size:1.7rem}h2{border-bottom:1px solid #bbb;margin-top:2.2rem}h3{margin-top:1.4rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.8rem}td,th{border:1px solid #aaa;padding:3px 6px;
vertical-align:top}th{background:#f0f0f0}td.n{text-align:center}code{font-size:.75rem;color:#555}
.warn{background:#fde8e8;border:2px solid #c0392b;padding:.8rem;border-radius:4px}
.caution{background:#fff4e0;border:1.5px solid #c07a12;padding:.8rem;border-radius:4px}
.note{background:#f5f5f5;border:1px solid #bbb;padding:.6rem;border-radius:3px;font-size:.9rem}
.small{font-size:.8rem;color:#444}figure{margin:1rem 0}figure img{max-width:100%}
figcaption{font-size:.8rem;color:#444}
.rows{display:grid;grid-template-columns:12rem 1fr;gap:6px 10px;align-items:center;margin:.4rem 0 1rem}
.rows .lab{font-weight:bold;font-size:.85rem}.rows .lab small{font-weight:normal;color:#555;display:block}
.rows img{max-width:100%;image-rendering:pixelated}.rows img.anim{height:9rem}
.collapsed{color:#b03a2e}
"""


def esc(x) -> str:
    return _html.escape("" if x is None else str(x), quote=True)


class Page:
    def __init__(self, build_dir: Path):
        self.build_dir = Path(build_dir)
        self.parts: list[str] = []

    def add(self, s: str) -> None:
        self.parts.append(s)

    def uri(self, rel: str) -> str:
        path = self.build_dir / rel
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f"data:{MIME.get(path.suffix.lower(), 'application/octet-stream')};base64,{data}"

    def img(self, rel: str, alt: str, cls: str = "") -> str:
        cls_attr = f' class="{cls}"' if cls else ""
        return f'<img src="{self.uri(rel)}" alt="{esc(alt)}"{cls_attr}>'

    def figure(self, rel: str | None, caption: str) -> None:
        if rel:
            self.add(f"<figure>{self.img(rel, caption)}<figcaption>{esc(caption)}</figcaption></figure>")


def _cell(c) -> str:
    if isinstance(c, list):
        return "<br>".join(esc(x) for x in c)
    return esc(c)


def simple_table(t: dict) -> str:
    head = "".join(f"<th>{_cell(h)}</th>" for h in t["header"])
    body = []
    for r in t["rows"]:
        code = f"<br><code>{esc(r['code'])}</code>" if r.get("code") else ""
        body.append(f"<tr><td>{esc(r['label'])}{code}</td>" + "".join(f'<td class="n">{esc(c)}</td>' for c in r["cells"])
                    + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def results_table(t: dict) -> str:
    if t["with_paper"]:
        head = ('<tr><th rowspan="2">Variant</th><th rowspan="2">n</th>'
                + "".join(f'<th colspan="2">{esc(m["label"])}</th>' for m in t["models"]) + "</tr><tr>"
                + "".join(f"<th>ours</th><th>paper {esc(m['paper_label'])}</th>" for m in t["models"]) + "</tr>")
    else:
        head = "<tr><th>Variant</th><th>n</th>" + "".join(f"<th>{esc(m['label'])}</th>" for m in t["models"]) + "</tr>"
    body = []
    for r in t["rows"]:
        cells = "".join(f'<td class="n">{esc(c["ours"])}</td>' + (f'<td class="n">{esc(c["paper"])}</td>'
                                                                   if t["with_paper"] else "") for c in r["cells"])
        body.append(f"<tr><td>{esc(r['name'])}<br><code>{esc(r['variant'])}</code></td><td class=\"n\">{esc(r['n'])}"
                    f"</td>{cells}</tr>")
    return f"<table><thead>{head}</thead><tbody>{''.join(body)}</tbody></table>"


def headline_table(rows: list[dict]) -> str:
    head = ("<tr><th>Comparison</th><th>Metric</th><th>DreamBooth3D \u2212 baseline<br>mean \u00b1 s.e.</th>"
            "<th>n (pairs)</th><th>p (Holm)</th><th>Verdict</th></tr>")
    body = "".join(f"<tr><td>{esc(r['baseline'])}</td><td>{esc(r['metric'])}</td><td class=\"n\">{esc(r['diff'])}</td>"
                   f"<td class=\"n\">{esc(r['n'])}</td><td class=\"n\">{esc(r['p'])}</td><td>{esc(r['verdict'])}</td></tr>"
                   for r in rows)
    return f"<table><thead>{head}</thead><tbody>{body}</tbody></table>"


def image_rows(page: Page, rows: list[dict]) -> str:
    out = ['<div class="rows">']
    for r in rows:
        bad = "collapsed" in r["label"]
        note = f"<small>{esc(r['note'])}</small>" if r.get("note") else ""
        out.append(f'<div class="lab{" collapsed" if bad else ""}">{esc(r["label"])}{note}</div>')
        im = r.get("image")
        if im is None:
            out.append('<div class="small">no render found</div>')
        elif im.get("anim"):
            out.append(f"<div>{page.img(im['anim'], r['label'], 'anim')}</div>")
        else:
            out.append(f"<div>{page.img(im['path'], r['label'])}</div>")
    out.append("</div>")
    return "".join(out)


def render(d: dict, build_dir: Path) -> str:
    p = Page(build_dir)
    p.add(f"<h1>{esc(d['title'])}</h1><p>{esc(d['subtitle'])}</p>"
          f"<p>backend: <code>{esc(d['backend'])}</code> &nbsp; CLIP: {esc(', '.join(d['clip_models']))}</p>")
    if d.get("warning"):
        p.add(f'<div class="warn"><b>{esc(d["warning"]["headline"])}</b><br>{esc(d["warning"]["body"])}</div>')
    if d.get("toy_note"):
        p.add(f'<div class="caution"><b>{esc(d["toy_note"]["headline"])}</b><br>{esc(d["toy_note"]["body"])}</div>')
    gt = d.get("groundtruth")
    if gt and gt.get("headline"):
        hl = gt["headline"]
        p.add(f'<p class="note"><b>Headline (ground-truth metrics, paired differences; {esc(hl["rule_short"])}):</b><br>'
              + "<br>".join(f"DreamBooth3D {esc(x)}." for x in hl["short"]) + "</p>")
    p.add('<p class="note">' + "<br>".join(esc(x) for x in d["summary"]) + "</p>")

    if gt:
        p.add(f"<h2>Ground-truth metrics (synthetic track)</h2><p>{esc(gt['intro'])}</p>{simple_table(gt['table'])}")
        if gt.get("headline"):
            p.add(f"<h3>Headline: DreamBooth3D against the baselines</h3><p>{esc(gt['headline_intro'])}</p>"
                  f"{headline_table(gt['headline']['rows'])}<p class=\"note\">{esc(gt['headline']['sentence'])}</p>")
        p.figure(gt.get("figure"), gt.get("caption", ""))
        p.add(f"<h3>Per subject</h3><p>{esc(gt['subject_intro'])}</p>{simple_table(gt['subject_table'])}")
    ob = d.get("objective")
    if ob:
        p.add(f"<h2>The NeRF objective: what each loss term does</h2><p>{esc(ob['intro'])}</p>")
        if ob.get("table"):
            p.add(simple_table(ob["table"]))
        p.figure(ob.get("figure"), ob.get("caption", ""))
        if ob.get("collapses"):
            p.add(f"<h3>Collapsed NeRFs</h3><p>Runs whose NeRF covers less of its evaluation views than the threshold "
                  f"({esc(ob['collapses']['note'])}).</p>{simple_table(ob['collapses'])}")
    pr = d.get("prior")
    if pr:
        p.add(f"<h2>Trained prior (toy backend)</h2><p>{esc(pr['intro'])}</p>")
        if pr.get("status"):
            p.add(f'<p class="note"><b>{esc(pr["status"])}</b></p>')
        if pr.get("samples"):
            p.figure(pr["samples"]["path"], pr["caption"])
        else:
            p.add(f'<p class="small">{esc(pr["caption"])}</p>')
        p.figure(pr.get("loss_figure"), "Training loss of the toy prior (train_log.json, loss_curve).")

    p.add("<h2>Results</h2>")
    if d.get("warning"):
        p.add(f'<p class="note"><b>{esc(d["warning"]["headline"])}</b> {esc(d["warning"]["short"])}</p>')
    if d.get("toy_note"):
        p.add(f'<p class="note">{esc(d["toy_note"]["short"])}</p>')
    mt = d["main_table"]
    p.add(f"<h3>CLIP R-Precision (R@1)</h3><p>{esc(mt['intro'])}</p>{results_table(mt)}"
          f"<p class=\"small\">{esc(mt['note'])}</p>")
    for f in d.get("figures", []):
        p.figure(f["path"], f["caption"])
    ct = d["clipt_table"]
    p.add(f"<h3>CLIP-T (mean cosine between views and prompt)</h3><p>{esc(ct['intro'])}</p>{results_table(ct)}")
    for key, title in (("fidelity", "Subject fidelity (DINO-I, CLIP-I)"), ("janus", "Janus score (multi-face artefact)")):
        if d.get(key):
            p.add(f"<h3>{title}</h3><p>{esc(d[key]['intro'])}</p>{simple_table(d[key]['table'])}")

    p.add(f"<h2>Ablations</h2><p>{esc(d['ablation_intro'])}</p>")
    if d.get("ablation_empty"):
        p.add(f'<p class="note">{esc(d["ablation_empty"])}</p>')
    for a in d["ablations"]:
        p.add(f"<h3>Ablation: {esc(a['name'])}</h3><p>{esc(a['description'])} Config key: <code>{esc(a['key'])}</code>; "
              f"values {esc(a['values'])}; {esc(a['cells'])} cells (values \u00d7 seeds).</p>"
              f'<p class="note">{esc(a["seeds_note"])}</p>')
        p.figure(a.get("figure"), a["caption"])
        if a["table"]["rows"]:
            p.add(simple_table(a["table"]))
        for s in a["strips"]:
            p.add(f"<p><b>{esc(s['heading'])}</b></p>{image_rows(p, s['rows'])}")

    p.add(f"<h2>Failure cases</h2><p>{esc(d['failure_intro'])}</p>")
    if not d["failures"]:
        p.add('<p class="note">No failure case could be chosen: the metrics table has no data to choose by.</p>')
    for f in d["failures"]:
        p.add(f"<h3>{esc(f['title'])}</h3><p>Flagged by: {esc(f['flagged_by'])} (value {esc(f['value'])}).<br>"
              f"Run: <code>{esc(f['run'])}</code></p>{image_rows(p, f['rows'])}")
        if f.get("figure"):
            p.add(f"<figure>{p.img(f['figure'], f['title'])}</figure>")

    us = d["user_study"]
    p.add(f"<h2>User study</h2><p>{esc(us['intro'])}</p>")
    if us.get("status"):
        p.add(f'<p class="note"><b>{esc(us["status"])}</b></p>')
    else:
        p.add(simple_table(us["table"]) + f'<p class="small">{esc(us["note"])}</p>')
        p.figure(us.get("figure"), "Preference for DreamBooth3D per question and baseline, with Wilson 95% intervals.")
    if us.get("paper"):
        pp = us["paper"]
        p.add(f"<h3>The paper's user study beside ours</h3><p class=\"small\">{esc(pp['source'])}</p>"
              f"{simple_table(pp['table'])}")
        p.figure(pp.get("figure"), pp["caption"])

    p.add(f"<h2>Galleries</h2><p>{esc(d['gallery_intro'])}</p><p class=\"small\">Turntables: the evaluation's "
          "animated turntable.gif (the PDF shows its frames side by side).</p>")
    if not d["galleries"]:
        p.add("<p><i>No rendered views were found under the runs folder.</i></p>")
    for g in d["galleries"]:
        p.add(f"<h3>Subject: {esc(g['subject'])}</h3>")
        for e in g["entries"]:
            prompt = f"<br><span class=\"small\">prompt: <code>{esc(e['prompt'])}</code></span>" if e.get("prompt") else ""
            p.add(f"<p><b>{esc(e['heading'])}</b>{prompt}</p>{image_rows(p, e['rows'])}")

    pv = d["provenance"]
    p.add("<h2>Provenance</h2>" + simple_table({"header": ["Item", "Value"],
                                                 "rows": [{"label": k, "code": None, "cells": [v]}
                                                          for k, v in pv["items"]]}))
    if pv["configs"]:
        p.add("<h3>Resolved configs</h3>" + simple_table({
            "header": ["Setting", "sha256 (canonical JSON, 16 hex)", "backend", "seed"],
            "rows": [{"label": c["setting"], "code": None, "cells": [c["hash"], c["backend"], c["seed"]]}
                     for c in pv["configs"]]}))
    p.add("<h3>Wall time per stage</h3><p>Over the runs behind the metrics table; a stage shared by several cells "
          "is counted once.</p>")
    if pv["wall_times"]:
        p.add(simple_table({"header": ["Stage", "runs", "mean (s)", "total (s)"],
                            "rows": [{"label": w["stage"], "code": None, "cells": [w["n"], w["mean"], w["total"]]}
                                     for w in pv["wall_times"]]}))
    if pv.get("jobs"):
        p.add("<h3>Jobs (their logs' timing lines)</h3>" + simple_table(job_table(pv["jobs"])))
    body = "\n".join(p.parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(d["title"])}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>'
            f"<body>\n{body}\n</body></html>\n")


def job_table(jobs: list[dict]) -> dict:
    """The jobs' timing lines per job kind (the PDF's table too)."""
    return {"header": ["Job", "jobs", "failed", "mean wall (s)", "total (s)", "start-up (s)", "steady it/s", "samplers"],
            "rows": [{"label": j["job"], "code": None,
                      "cells": [j["n"], j["failed"], j["mean"], j["total"], j["startup"], j["steady"], j["samplers"]]}
                     for j in jobs]}
