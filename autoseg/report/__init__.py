"""Self-contained HTML reports of a run: plan, training curves, cross-validation metrics, selection, overlays."""

from autoseg.report.html_report import ReportSection, format_number, write_report

__all__ = ["ReportSection", "format_number", "write_report"]
