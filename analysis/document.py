"""A report as a list of blocks, rendered twice: Markdown (images as files next to it) and one
self-contained HTML page (images as data URIs, CSS inline, no scripts, nothing fetched).

Writing the content once and rendering it twice keeps the two formats identical in substance.
Inline markup in text is limited to `code`, **bold** and *italic*, which both renderers understand.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Paragraph:
    text: str


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    # columns whose cells are numbers (right-aligned in HTML)
    numeric: set[int] = field(default_factory=set)


@dataclass
class Image:
    """A PNG: written to `path` (relative to the Markdown file) and embedded in the HTML."""

    path: str
    png: bytes
    alt: str
    caption: str = ""


Block = Heading | Paragraph | Bullets | Table | Image

# --- Markdown ------------------------------------------------------------------------------


def to_markdown(blocks: list[Block]) -> str:
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"{'#' * b.level} {b.text}\n")
        elif isinstance(b, Paragraph):
            out.append(b.text + "\n")
        elif isinstance(b, Bullets):
            out.append("\n".join(f"- {item}" for item in b.items) + "\n")
        elif isinstance(b, Table):
            out.append(md_table(b.header, b.rows) + "\n")
        elif isinstance(b, Image):
            out.append(f"![{b.alt}]({b.path})\n" + (f"\n*{b.caption}*\n" if b.caption else ""))
    return "\n".join(out).rstrip() + "\n"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    def cell(c) -> str:
        return str(c).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# --- HTML ----------------------------------------------------------------------------------

_CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: #1d232a; background: #fff; margin: 0; }
main { max-width: 1400px; margin: 0 auto; padding: 24px 32px 64px; }
h1 { font-size: 26px; margin: 8px 0 4px; }
h2 { font-size: 21px; margin: 36px 0 8px; padding-top: 12px; border-top: 2px solid #e3e7ec; }
h3 { font-size: 17px; margin: 24px 0 6px; }
h4 { font-size: 15px; margin: 18px 0 6px; }
p { margin: 6px 0 10px; }
code { font: 13px/1.4 ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace;
       background: #f2f4f7; padding: 1px 4px; border-radius: 3px; }
table { border-collapse: collapse; margin: 8px 0 14px; font-size: 14px; }
th, td { border: 1px solid #d5dbe2; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #eef2f6; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr:nth-child(even) td { background: #f8fafc; }
td.bad { color: #b42318; font-weight: 600; }
ul { margin: 6px 0 12px; padding-left: 22px; }
figure { display: inline-block; margin: 8px 12px 16px 0; vertical-align: top; max-width: 100%; }
figure img { max-width: 100%; border: 1px solid #e3e7ec; }
figcaption { font-size: 13px; color: #4a5563; max-width: 640px; }
nav { font-size: 14px; background: #f5f7fa; border: 1px solid #e3e7ec; padding: 6px 12px;
      margin: 12px 0; }
nav a { margin-right: 14px; color: #1f5fa8; text-decoration: none; }
"""

_BAD = {"OOM", "OOM (predicted)", "crash", "timeout", "error", "invalid"}


def _inline(text: str) -> str:
    """Escape, then turn `code`, **bold** and *italic* into tags."""
    parts = re.split(r"(`[^`]*`)", text)
    out = []
    for part in parts:
        if part.startswith("`") and part.endswith("`") and len(part) >= 2:
            out.append(f"<code>{html.escape(part[1:-1])}</code>")
        else:
            esc = html.escape(part)
            esc = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", esc)
            out.append(re.sub(r"(?<![\w*])\*([^*\s][^*]*?)\*(?![\w*])", r"<em>\1</em>", esc))
    return "".join(out)


def _anchor(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def to_html(blocks: list[Block], title: str) -> str:
    body: list[str] = []
    toc = [b for b in blocks if isinstance(b, Heading) and b.level == 2]
    figures: list[str] = []

    def flush_figures() -> None:
        if figures:
            body.append("<div class=\"figures\">" + "".join(figures) + "</div>")
            figures.clear()

    for b in blocks:
        if not isinstance(b, Image):
            flush_figures()
        if isinstance(b, Heading):
            body.append(f"<h{b.level} id=\"{_anchor(b.text)}\">{_inline(b.text)}</h{b.level}>")
            if b.level == 1 and toc:
                links = "".join(f"<a href=\"#{_anchor(h.text)}\">{_inline(h.text)}</a>" for h in toc)
                body.append(f"<nav>{links}</nav>")
        elif isinstance(b, Paragraph):
            body.append(f"<p>{_inline(b.text)}</p>")
        elif isinstance(b, Bullets):
            body.append("<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in b.items) + "</ul>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{_inline(h)}</th>" for h in b.header)
            rows = []
            for row in b.rows:
                cells = []
                for j, c in enumerate(row):
                    cls = ["num"] if j in b.numeric else []
                    if str(c) in _BAD:
                        cls.append("bad")
                    attr = f" class=\"{' '.join(cls)}\"" if cls else ""
                    cells.append(f"<td{attr}>{_inline(str(c))}</td>")
                rows.append("<tr>" + "".join(cells) + "</tr>")
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")
        elif isinstance(b, Image):
            data = base64.b64encode(b.png).decode("ascii")
            cap = f"<figcaption>{_inline(b.caption)}</figcaption>" if b.caption else ""
            figures.append(f"<figure><img alt=\"{html.escape(b.alt)}\" "
                           f"src=\"data:image/png;base64,{data}\">{cap}</figure>")
    flush_figures()
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n"
        f"<body>\n<main>\n" + "\n".join(body) + "\n</main>\n</body>\n</html>\n"
    )
