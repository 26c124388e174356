"""The report as one self-contained HTML page: inline CSS, images as base64 PNG data URIs, no external resource."""

from __future__ import annotations

import base64
import html
import re

from diyt.report.document import Block, Document, Image, Paragraph, Subsection, Table

CSS = """
body { margin: 0; background: #f5f6f8; color: #1f2328; font: 15px/1.5 system-ui, -apple-system, "Segoe UI",
       Roboto, "DejaVu Sans", sans-serif; }
main { max-width: 1240px; margin: 0 auto; padding: 24px 32px 48px; background: #fff; }
h1 { font-size: 28px; margin: 8px 0 4px; }
h2 { font-size: 21px; margin: 36px 0 12px; padding-bottom: 4px; border-bottom: 2px solid #d0d7de; }
h3 { font-size: 17px; margin: 20px 0 8px; width: 100%; }
p { margin: 6px 0; }
.intro { color: #57606a; }
nav ul { columns: 2; margin: 12px 0 0; padding-left: 0; list-style: none; }
nav a, a { color: #0969da; text-decoration: none; }
td code { white-space: nowrap; }
code { font: 13px ui-monospace, "DejaVu Sans Mono", monospace; background: #eff1f3; padding: 1px 4px;
       border-radius: 4px; }
.blocks { display: flex; flex-wrap: wrap; gap: 12px 16px; align-items: flex-start; }
.blocks > * { flex: 0 0 100%; box-sizing: border-box; }
table { border-collapse: collapse; font-size: 14px; width: auto; }
th, td { padding: 5px 12px; border-bottom: 1px solid #d8dee4; text-align: left; vertical-align: top; }
th { background: #f0f3f6; font-weight: 600; }
th { white-space: nowrap; }
td.r, th.r { text-align: right; font-variant-numeric: tabular-nums; }
tr.bold td { font-weight: 700; border-top: 2px solid #8c959f; }
tbody tr:nth-child(even) { background: #fafbfc; }
figure { margin: 0; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid #e1e4e8; }
figcaption { font-size: 13px; color: #57606a; margin-top: 3px; }
"""


def inline(text: str) -> str:
    """Escaped text with `backticks` as <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def table_html(table: Table) -> str:
    align = [' class="r"' if a == "r" else "" for a in table.alignment()]
    head = "".join(f"<th{a}>{inline(c)}</th>" for a, c in zip(align, table.columns))
    rows = "".join(("<tr class='bold'>" if i in table.bold_rows else "<tr>")
                   + "".join(f"<td{a}>{inline(c)}</td>" for a, c in zip(align, row)) + "</tr>"
                   for i, row in enumerate(table.rows))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def image_html(image: Image) -> str:
    data = base64.b64encode(image.png).decode("ascii")
    width = f"calc({image.width:.2%} - {16 * (1 - image.width):g}px)"
    return (f'<figure style="flex-basis: {width}"><img src="data:image/png;base64,{data}" '
            f'alt="{html.escape(image.caption)}"><figcaption>{inline(image.caption)}</figcaption></figure>')


def _blocks(blocks: list[Block], level: int) -> str:
    out = []
    for b in blocks:
        if isinstance(b, Paragraph):
            out.append(f"<p>{inline(b.text)}</p>")
        elif isinstance(b, Table):
            out.append(table_html(b))
        elif isinstance(b, Image):
            out.append(image_html(b))
        elif isinstance(b, Subsection):
            out.append(f"<h{level}>{inline(b.title)}</h{level}>" + _blocks(b.blocks, level + 1))
    return "".join(out)


def render_html(doc: Document) -> str:
    nav = "".join(f'<li><a href="#{s.anchor}">{inline(s.title)}</a></li>' for s in doc.sections)
    sections = "\n".join(f'<section id="{s.anchor}"><h2>{inline(s.title)}</h2>'
                         f'<div class="blocks">{_blocks(s.blocks, 3)}</div></section>' for s in doc.sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{inline(doc.title)}</title><style>{CSS}</style></head>\n"
            f'<body><main><h1>{inline(doc.title)}</h1><p class="intro">{inline(doc.intro)}</p>'
            f"<nav><ul>{nav}</ul></nav>\n{sections}\n</main></body></html>\n")
