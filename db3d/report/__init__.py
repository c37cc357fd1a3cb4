"""The report: `build_report(cfg, metrics_path, runs_dir, out_pdf)` typesets reports/main.pdf with Typst
and writes reports/main.html and reports/summary.md beside it (db3d.report.build)."""
from .build import build_report, report_outputs

__all__ = ["build_report", "report_outputs"]
