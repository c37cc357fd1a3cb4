"""The report: `build_report(cfg, metrics_path, runs_dir, out_pdf)` typesets reports/main.pdf with Typst."""
from .build import PAPER_VALUES, build_report

__all__ = ["PAPER_VALUES", "build_report"]
