"""Small reports for people: one Markdown and one self-contained HTML file (plots embedded as PNG data URIs).

    r = Report("Evaluation")
    r.table({"accuracy": 0.52, "examples": 300})
    r.image(loss_curve_png(log_history, out_dir / "loss_curve.png"), "loss curve")  # calltune.core.figures
    r.write(out_dir)  # -> report.md, report.html
"""
from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from calltune.core.io import atomic_open


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class Report:
    def __init__(self, title: str):
        self.title = title
        self._parts: list[tuple[str, Any]] = []

    def heading(self, text: str) -> Report:
        self._parts.append(("heading", text))
        return self

    def text(self, text: str) -> Report:
        self._parts.append(("text", text))
        return self

    def table(self, rows: dict[str, Any] | list[dict[str, Any]]) -> Report:
        """A dict is a two-column name/value table; a list of dicts has one column per key."""
        if isinstance(rows, dict):
            rows = [{"name": k, "value": v} for k, v in rows.items()]
        if rows:
            self._parts.append(("table", rows))
        return self

    def terms(self, terms: dict[str, str]) -> Report:
        """A glossary: each term with what it means."""
        self._parts.append(("terms", terms))
        return self

    def image(self, png: Path | None, alt: str) -> Report:
        if png is not None:
            self._parts.append(("image", (base64.b64encode(Path(png).read_bytes()).decode(), alt)))
        return self

    def dump(self) -> list:
        """The parts as JSON-able data: one step writes a section that another's report (or a model card) shows."""
        return [[kind, value] for kind, value in self._parts]

    def extend(self, parts: list) -> Report:
        """Append parts another report dumped."""
        self._parts += [(kind, value) for kind, value in parts]
        return self

    def section(self, other: Report) -> Report:
        """Another report as a section of this one: its title a heading, then its parts."""
        return self.heading(other.title).extend(other.dump())

    def to_markdown(self, level: int = 1) -> str:
        """The title at heading `level` (the sections one below): 2 nests the report in a page's section."""
        out = [f"{'#' * level} {self.title}", ""]
        for kind, value in self._parts:
            if kind == "heading":
                out += [f"{'#' * (level + 1)} {value}", ""]
            elif kind == "text":
                out += [value, ""]
            elif kind == "table":
                cols = list(value[0])
                out.append("| " + " | ".join(cols) + " |")
                out.append("|" + "---|" * len(cols))
                for row in value:
                    out.append("| " + " | ".join(_md_cell(row.get(c, "")) for c in cols) + " |")
                out.append("")
            elif kind == "image":
                data, alt = value
                out += [f"![{alt}](data:image/png;base64,{data})", ""]
            elif kind == "terms":
                out += [f"- **{term}**: {meaning}" for term, meaning in value.items()] + [""]
        return "\n".join(out)

    def to_html(self) -> str:
        e = html.escape
        out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(self.title)}</title>",
               "<meta name='viewport' content='width=device-width, initial-scale=1'>",
               # Everything fits the window at any width: images scale down, long words and paths wrap anywhere.
               "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
               "img{max-width:100%;height:auto;display:block}"
               "table{border-collapse:collapse;max-width:100%}td,th{border:1px solid #ccc;padding:.3em .6em;"
               "text-align:left;vertical-align:top;white-space:pre-wrap;overflow-wrap:break-word}"
               ".long{overflow-wrap:anywhere}"
               "dt{font-weight:bold}dd{margin:0 0 .5em 1.5em}</style></head><body>",
               f"<h1>{e(self.title)}</h1>"]
        for kind, value in self._parts:
            if kind == "heading":
                out.append(f"<h2>{e(value)}</h2>")
            elif kind == "text":
                out.append(f"<p>{e(value)}</p>")
            elif kind == "table":
                cols = list(value[0])
                out.append("<table><tr>" + "".join(f"<th>{_breakable(c)}</th>" for c in cols) + "</tr>")
                for row in value:
                    out.append("<tr>" + "".join(_td(_cell(row.get(c, ""))) for c in cols) + "</tr>")
                out.append("</table>")
            elif kind == "image":
                data, alt = value
                out.append(f"<img alt='{e(alt)}' src='data:image/png;base64,{data}'>")
            elif kind == "terms":
                out.append("<dl>" + "".join(f"<dt>{e(t)}</dt><dd>{e(m)}</dd>" for t, m in value.items()) + "</dl>")
        out.append("</body></html>")
        return "\n".join(out)

    def write(self, out_dir: Path, stem: str = "report") -> tuple[Path, Path]:
        out_dir = Path(out_dir)
        md, page = out_dir / f"{stem}.md", out_dir / f"{stem}.html"
        with atomic_open(md) as fh:
            fh.write(self.to_markdown())
        with atomic_open(page) as fh:
            fh.write(self.to_html())
        return md, page


def _td(text: str) -> str:
    # Only a cell with a long unbreakable token (a path, a hash) may break it anywhere: elsewhere words stay whole.
    long = any(len(word) > 30 for word in text.split())
    return f"<td class='long'>{html.escape(text)}</td>" if long else f"<td>{_breakable(text)}</td>"


def _breakable(text: str) -> str:
    # snake_case names (metrics, models) may break after an underscore: a realism table has seven columns of them.
    return html.escape(text).replace("_", "_<wbr>")


def _md_cell(value: Any) -> str:
    # A table cell is one line; escape what would break the row.
    return _cell(value).replace("|", "\\|").replace("\n", "<br>")

