"""Publishing a step's report dict to KFP output artifacts (duck-typed: no kfp import here)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable


def flatten(report: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in report.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def publish(report: dict[str, Any], title: str, *, artifacts: Iterable = (), metrics=None, report_md=None,
            html=None, plot: Path | None = None) -> None:
    """Numbers go to Metrics and every artifact's metadata; the whole report to Markdown and/or HTML."""
    from calltune.report import Report

    flat = flatten(report)
    numbers = {k: v for k, v in flat.items() if _is_number(v)}
    for artifact in artifacts:
        artifact.metadata.update(numbers)
    if metrics is not None:
        for key, value in numbers.items():
            metrics.log_metric(key, value)
    page = Report(title).table(flat).image(plot if plot and Path(plot).exists() else None, "plot")
    if report_md is not None:
        Path(report_md.path).write_text(page.to_markdown(), encoding="utf-8")
    if html is not None:
        Path(html.path).write_text(page.to_html(), encoding="utf-8")
