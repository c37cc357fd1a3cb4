"""`reports/summary.md`: the report's headline in a page of Markdown, from the same data as the PDF.

The README links here instead of restating numbers: the headline comparison (ground truth, with
its n and verdicts) when there is one, the CLIP R-Precision table with the paper's column, and the
run's provenance. Every string is the PDF's own (the same data.json dict); nothing is computed here.
"""
from __future__ import annotations


def _md(x) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(_md(h) for h in header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_md(c) for c in r) + " |" for r in rows]
    return out


def render(d: dict, pdf_name: str = "main.pdf", html_name: str = "main.html") -> str:
    lines = [f"# {d['title']}: summary", "",
             f"Written by the report rule (`python -m db3d report`) from the same data as [{pdf_name}]({pdf_name}) "
             f"and [{html_name}]({html_name}); regenerated with them, never edited by hand.", "",
             f"Backend: `{d['backend']}`."]
    for box in ("warning", "toy_note"):
        if d.get(box):
            lines += ["", f"> {d[box]['short']}"]
    gt = d.get("groundtruth")
    hl = gt.get("headline") if gt else None
    if hl:
        lines += ["", f"## Headline: DreamBooth3D against the baselines (ground truth; {hl['rule_short']})", ""]
        lines += _table(["Comparison", "Metric", "DreamBooth3D \u2212 baseline (mean \u00b1 s.e.)", "n (pairs)",
                         "p (Holm)", "Verdict"],
                        [[r["baseline"], r["metric"], r["diff"], r["n"], r["p"], r["verdict"]] for r in hl["rows"]])
        lines += ["", hl["sentence"]]
    mt = d["main_table"]
    lines += ["", "## CLIP R-Precision (R@1)", ""]
    header = ["Variant", "n"]
    for m in mt["models"]:
        header += [f"{m['label']} ours", f"paper {m['paper_label']}"]
    lines += _table(header, [[f"{r['name']} (`{r['variant']}`)", r["n"]]
                             + [x for c in r["cells"] for x in (c["ours"], c["paper"])] for r in mt["rows"]])
    lines += ["", mt["note"]]
    lines += ["", "## Provenance", ""]
    lines += [f"- **{k}**: {_md(v)}" for k, v in d["provenance"]["items"]]
    lines += ["", *(f"- {x}" for x in d["summary"])]
    return "\n".join(lines).rstrip() + "\n"
