"""The report as data: sections of paragraphs, tables and images, rendered to Markdown and to HTML alike."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.figure import Figure


@dataclass(frozen=True)
class Paragraph:
    text: str  # plain text; `backticks` mark code


@dataclass(frozen=True)
class Table:
    columns: list[str]
    rows: list[list[str]]  # already formatted
    bold_rows: tuple[int, ...] = ()  # e.g. the mean row
    align: str = ""  # one "l" or "r" per column; "" = the first left, the rest right (numbers)

    def alignment(self) -> str:
        return self.align or "l" + "r" * (len(self.columns) - 1)


@dataclass(frozen=True)
class Image:
    name: str  # a file name, unique within the report
    png: bytes
    caption: str
    source: Path | None = None  # an existing file (linked from Markdown); None = generated (written beside it)
    width: float = 1.0  # the HTML width as a fraction of the page: 0.5 sets two side by side


@dataclass(frozen=True)
class Subsection:
    title: str
    blocks: list[Block]


Block = Paragraph | Table | Image | Subsection


@dataclass(frozen=True)
class Section:
    anchor: str
    title: str
    blocks: list[Block] = field(default_factory=list)


@dataclass(frozen=True)
class Document:
    title: str
    intro: str
    sections: list[Section]

    def images(self) -> list[Image]:
        """Every image of the document, depth first."""
        def walk(blocks: list[Block]) -> list[Image]:
            out: list[Image] = []
            for b in blocks:
                out += [b] if isinstance(b, Image) else walk(b.blocks) if isinstance(b, Subsection) else []
            return out

        return [img for s in self.sections for img in walk(s.blocks)]


def figure_png(fig: Figure, dpi: int = 110) -> bytes:
    """A matplotlib figure as PNG bytes, without the variable metadata (so reruns give identical files)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()
