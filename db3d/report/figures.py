"""The report's matplotlib figures (Agg canvas, PNG without a timestamp: same data -> same bytes)."""
from __future__ import annotations

import math
from pathlib import Path

COLORS = ["#4477aa", "#ee6677", "#228833", "#ccbb44", "#66ccee", "#aa3377", "#bbbbbb"]
MARKERS = ["o", "s", "D", "^", "v", "P", "X"]


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=200)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> None:
    fig.savefig(path, format="png", metadata={"Software": None})


def rprecision_figure(path: Path, stats_r: dict, stats_t: dict, variants: list[str], models: list[str],
                      names: dict, paper: dict, base_model, tiny: bool) -> None:
    """Bar charts of R@1 and CLIP-T per variant (bars: CLIP models; error bars: s.e.)."""
    fig = _figure(9.0, 3.4)
    axes = fig.subplots(1, 2)
    width = 0.8 / max(len(models), 1)
    xs = list(range(len(variants)))
    for ax, stats, title, with_paper in ((axes[0], stats_r, "CLIP R-Precision (R@1)", True),
                                         (axes[1], stats_t, "CLIP-T (view-prompt cosine)", False)):
        for j, m in enumerate(models):
            off = (j - (len(models) - 1) / 2) * width
            means = [stats.get((v, m), (float("nan"), None, 0))[0] for v in variants]
            errs = [stats.get((v, m), (0, None, 0))[1] or 0.0 for v in variants]
            ax.bar([x + off for x in xs], [0 if math.isnan(y) else y for y in means], width, yerr=errs,
                   capsize=2, color=COLORS[j % len(COLORS)], label=m, error_kw={"elinewidth": 0.8})
            if with_paper:
                pv = [(x + off, paper.get(v, {}).get(base_model(m))) for x, v in zip(xs, variants)]
                pv = [(x, y) for x, y in pv if y is not None]
                if pv:
                    ax.plot([p[0] for p in pv], [p[1] for p in pv], "kD", markersize=4,
                            label="paper" if j == 0 else None)
        ax.set_xticks(xs)
        ax.set_xticklabels([names.get(v, v).split(" (")[0] for v in variants], fontsize=7, rotation=12)
        ax.set_title(title + (" - random weights" if tiny else ""), fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(axis="y", linewidth=0.3, alpha=0.6)
        ax.set_axisbelow(True)
    axes[0].set_ylim(0, 1.05)
    axes[0].legend(fontsize=6, loc="upper left", frameon=False)
    fig.tight_layout()
    _save(fig, path)


def _xscale(ax, xs: list[float]) -> None:
    pos = sorted(x for x in xs if x > 0)
    if not pos or len(xs) < 3:
        return
    if min(xs) > 0 and pos[-1] / pos[0] >= 20:
        ax.set_xscale("log")
    elif min(xs) == 0 and len(pos) >= 2 and pos[-1] / pos[0] >= 20:
        ax.set_xscale("symlog", linthresh=pos[0])


def ablation_figure(path: Path, param: str, panels: list[dict], default: float | None, tiny: bool,
                    xlabels: dict[float, str] | None = None) -> None:
    """One panel per metric: mean +- s.e. against the swept value, one line per series.

    panels: [{"title", "ylabel", "series": [{"label", "x": [...], "y": [...], "se": [...]}]}]
    Points are numeric x (`xlabels` names them for a non-numeric sweep); `default` (the config's
    value) is marked with a dotted line."""
    n = max(len(panels), 1)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig = _figure(3.1 * cols, 2.5 * rows + 0.3)
    axes = fig.subplots(rows, cols, squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k >= len(panels):
            ax.set_visible(False)
            continue
        p = panels[k]
        allx = []
        for j, s in enumerate(p["series"]):
            allx += s["x"]
            ax.errorbar(s["x"], s["y"], yerr=[e or 0.0 for e in s["se"]], marker=MARKERS[j % len(MARKERS)],
                        markersize=3.5, linewidth=1.0, capsize=2.5, elinewidth=0.8,
                        color=COLORS[j % len(COLORS)], label=s["label"])
        if xlabels is None:
            _xscale(ax, sorted(set(allx)))
        if default is not None:
            ax.axvline(default, color="0.4", linestyle=":", linewidth=0.9, label="config default")
        xt = sorted(set(allx))
        if xt:
            ax.set_xticks(xt)
            ax.set_xticklabels([xlabels.get(x, f"{x:g}") if xlabels else f"{x:g}" for x in xt], fontsize=6.5)
            ax.minorticks_off()
        ax.set_title(p["title"] + (", random weights" if tiny else ""), fontsize=7.5)
        ax.set_xlabel(param, fontsize=7)
        ax.set_ylabel(p["ylabel"], fontsize=7)
        ax.tick_params(axis="y", labelsize=6.5)
        ax.grid(linewidth=0.3, alpha=0.6)
        ax.set_axisbelow(True)
        if k == 0:
            ax.legend(fontsize=5.5, frameon=False)
    fig.tight_layout()
    _save(fig, path)


def userstudy_figure(path: Path, items: list[dict]) -> None:
    """Preference for DreamBooth3D with its Wilson 95% interval, one row per question x baseline.

    items: [{"label", "rate", "lo", "hi"}] (rate may be NaN)."""
    fig = _figure(7.0, 0.35 * max(len(items), 1) + 0.9)
    ax = fig.subplots(1, 1)
    ys = list(range(len(items)))[::-1]
    for y, it in zip(ys, items):
        if it["rate"] is None or math.isnan(it["rate"]):
            continue
        lo, hi = it["lo"], it["hi"]
        xerr = [[it["rate"] - lo], [hi - it["rate"]]] if lo is not None and hi is not None else None
        ax.errorbar([it["rate"]], [y], xerr=xerr, fmt="o", color=COLORS[0], markersize=4, capsize=3, elinewidth=1)
    ax.axvline(0.5, color="0.4", linestyle=":", linewidth=0.9)
    ax.set_yticks(ys)
    ax.set_yticklabels([it["label"] for it in items], fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of answers preferring DreamBooth3D (95% Wilson interval); dotted: no preference",
                  fontsize=7)
    ax.tick_params(axis="x", labelsize=7)
    ax.grid(axis="x", linewidth=0.3, alpha=0.6)
    fig.tight_layout()
    _save(fig, path)


PREF_COLORS = ("#cfe9dc", "#d9d9d9", "#fbe0cc")   # the paper's figure: left preferred, tied, right preferred


def preference_figure(path: Path, groups: list[dict]) -> None:
    """The paper's user-study layout: per question x baseline a stacked bar DreamBooth3D preferred /
    tied / baseline preferred (shares, labelled in %), the paper's bar above ours.

    groups: [{"label", "bars": [{"source", "method", "tied", "baseline"}]}] (a bar may be missing)."""
    rows = [(g["label"], b) for g in groups for b in g["bars"]]
    fig = _figure(7.0, 0.32 * max(len(rows), 1) + 0.9)
    ax = fig.subplots(1, 1)
    ys = list(range(len(rows)))[::-1]
    for y, (label, b) in zip(ys, rows):
        left = 0.0
        for share, colour in zip((b["method"], b["tied"], b["baseline"]), PREF_COLORS):
            if share is None or share != share or share <= 0:
                continue
            ax.barh([y], [share], left=left, color=colour, edgecolor="0.3", linewidth=0.5, height=0.75)
            if share >= 0.08:
                ax.text(left + share / 2, y, f"{100 * share:.0f} %", ha="center", va="center", fontsize=6.5)
            left += share
    ax.set_yticks(ys)
    ax.set_yticklabels([f"{label} - {b['source']}" for label, b in rows], fontsize=6.5)
    ax.set_xlim(0, 1)
    ax.set_xlabel("DreamBooth3D preferred (green) / tied (grey) / baseline preferred (orange); pairs by majority vote",
                  fontsize=7)
    ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    _save(fig, path)


def loss_figure(path: Path, losses: list[float], title: str) -> None:
    """Loss per step (log scale when positive), non-finite steps marked on the x axis."""
    fig = _figure(6.0, 2.0)
    ax = fig.subplots(1, 1)
    xs = list(range(len(losses)))
    fin = [(x, y) for x, y in zip(xs, losses) if math.isfinite(y)]
    bad = [x for x, y in zip(xs, losses) if not math.isfinite(y)]
    if fin:
        ax.plot([x for x, _ in fin], [y for _, y in fin], color=COLORS[0], linewidth=0.8)
        ys = [y for _, y in fin]
        if min(ys) > 0 and max(ys) / min(ys) > 100:
            ax.set_yscale("log")
    if bad:
        ax.plot(bad, [0.0] * len(bad) if not fin else [min(y for _, y in fin)] * len(bad), "x", color=COLORS[1],
                markersize=4, label="non-finite loss")
        ax.legend(fontsize=6, frameon=False)
    n = len(losses)
    q = max(1, n // 4)
    for a, b in ((0, q), (n - q, n)):
        ax.axvspan(a - 0.5, b - 0.5, color="0.9", zorder=0)
    ax.set_title(title + " (shaded: the quarters compared)", fontsize=7)
    ax.set_xlabel("step", fontsize=7)
    ax.tick_params(labelsize=6.5)
    ax.grid(linewidth=0.3, alpha=0.6)
    fig.tight_layout()
    _save(fig, path)


def groundtruth_figure(path: Path, panels: list[dict]) -> None:
    """One panel per ground-truth metric: per variant the mean +- s.e. (large marker, error bar)
    and the per-subject means (small dots, spread sideways).

    panels: [{"title", "ylabel", "items": [{"label", "mean", "se", "n", "points": [...]}]}]"""
    n = max(len(panels), 1)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig = _figure(2.35 * cols + 0.3, 2.6 * rows + 0.2)
    axes = fig.subplots(rows, cols, squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k >= len(panels):
            ax.set_visible(False)
            continue
        p = panels[k]
        xs = list(range(len(p["items"])))
        for x, it in zip(xs, p["items"]):
            c = COLORS[x % len(COLORS)]
            pts = it["points"]
            if pts:
                w = 0.22
                offs = [(-w + 2 * w * i / (len(pts) - 1)) if len(pts) > 1 else 0.0 for i in range(len(pts))]
                ax.plot([x + 0.12 + o * 0.5 for o in offs], pts, ".", color=c, alpha=0.45, markersize=3.5)
            if it["n"] and not math.isnan(it["mean"]):
                ax.errorbar([x - 0.12], [it["mean"]], yerr=[it["se"] or 0.0], fmt=MARKERS[x % len(MARKERS)],
                            color=c, markersize=5, capsize=3, elinewidth=1.0)
        ax.set_xticks(xs)
        ax.set_xticklabels([it["label"] for it in p["items"]], fontsize=6.5, rotation=20, ha="right")
        ax.set_xlim(-0.6, len(xs) - 0.4)
        ax.set_title(p["title"], fontsize=8)
        ax.set_ylabel(p["ylabel"], fontsize=7)
        ax.tick_params(axis="y", labelsize=6.5)
        ax.grid(axis="y", linewidth=0.3, alpha=0.6)
        ax.set_axisbelow(True)
    fig.tight_layout()
    _save(fig, path)


def prior_loss_figure(path: Path, curve: list[tuple[float, float]]) -> None:
    """Training loss of the toy prior against the step (log y when it spans > 20x)."""
    fig = _figure(6.0, 2.1)
    ax = fig.subplots(1, 1)
    fin = [(s, v) for s, v in curve if math.isfinite(s) and math.isfinite(v)]
    if fin:
        ax.plot([s for s, _ in fin], [v for _, v in fin], color=COLORS[0], linewidth=0.9, marker="." if len(fin) < 60
                else None, markersize=2.5)
        ys = [v for _, v in fin]
        if min(ys) > 0 and max(ys) / min(ys) > 20:
            ax.set_yscale("log")
    ax.set_title("toy prior: training loss", fontsize=8)
    ax.set_xlabel("step", fontsize=7)
    ax.set_ylabel("loss", fontsize=7)
    ax.tick_params(labelsize=6.5)
    ax.grid(linewidth=0.3, alpha=0.6)
    fig.tight_layout()
    _save(fig, path)
