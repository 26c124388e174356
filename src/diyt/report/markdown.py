"""The report as GitHub-flavoured Markdown: images are linked, generated ones written to a figures folder."""

from __future__ import annotations

import os
from pathlib import Path

from diyt.report.document import Block, Document, Image, Paragraph, Subsection, Table


def table_markdown(table: Table) -> str:
    rule = ["---:" if a == "r" else "---" for a in table.alignment()]
    lines = ["| " + " | ".join(table.columns) + " |", "| " + " | ".join(rule) + " |"]
    for i, row in enumerate(table.rows):
        cells = [c.replace("|", "\\|") for c in row]
        if i in table.bold_rows:
            cells = [f"**{c}**" if c else c for c in cells]  # "****" would render as a rule
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _link(target: Path, base: Path) -> str:
    return Path(os.path.relpath(target, base)).as_posix()


def _blocks(blocks: list[Block], level: int, md_dir: Path, figures_dir: Path) -> list[str]:
    out = []
    for b in blocks:
        if isinstance(b, Paragraph):
            out.append(b.text)
        elif isinstance(b, Table):
            out.append(table_markdown(b))
        elif isinstance(b, Image):
            target = b.source if b.source is not None else figures_dir / b.name
            out.append(f"![{b.caption}]({_link(target, md_dir)})\n*{b.caption}*")
        elif isinstance(b, Subsection):
            out.append(f"{'#' * level} {b.title}")
            out += _blocks(b.blocks, level + 1, md_dir, figures_dir)
    return out


def render_markdown(doc: Document, md_path: Path, figures_dir: Path) -> tuple[str, dict[str, bytes]]:
    """The Markdown text for `md_path`, and the generated PNGs to write under `figures_dir` by file name."""
    md_dir = Path(md_path).parent
    parts = [f"# {doc.title}", doc.intro]
    for s in doc.sections:
        parts += [f"## {s.title}", *_blocks(s.blocks, 3, md_dir, Path(figures_dir))]
    generated = {img.name: img.png for img in doc.images() if img.source is None}
    return "\n\n".join(parts) + "\n", generated
