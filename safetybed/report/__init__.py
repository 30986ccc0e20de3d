"""Reports a person reads: self-contained HTML (plots embedded as base64 PNG) beside the JSON they render."""

from safetybed.report.certificate import render_certificate_html, write_report

__all__ = ["render_certificate_html", "write_report"]
