"""Slide geometry: the reveal.js screen, the deck's CSS, and estimated sizes of prose, code and tables (logical px)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from html import escape
from html.parser import HTMLParser


@dataclass(frozen=True)
class Screen:
    """The reveal.js logical slide (scaled to fit the screen) and the sizes the deck's CSS sets, in logical px."""

    width: int = 1280  # 16:9 like a projector: no side bands at 1280x720 or 1920x1080
    height: int = 720
    # content height a slide may be estimated at; the estimate is rough, tests/test_slides.py measures the real one
    budget: int = 610
    text_width: int = 1180  # line width for prose, less a safety margin
    # reveal.js's white theme sets 42px on its 960x700 slide; on 1280x720 the scale is 0.96 instead of 0.987, so
    # 44px shows at 42.2px on a 1280x720 screen, against reveal.js's default 41.5px
    body_px: float = 44
    line: float = 1.3
    code_px: float = 24  # reveal.js sets pre to 0.55em
    code_line: float = 1.25
    code_cols: int = 70  # DejaVu Sans Mono at 24px: 76 columns fit; less a margin for wrapping at word ends
    table_px: float = 26.4  # 0.6em: tables read like code, at about code size
    image_max: int = 430  # CSS max-height of an output image
    code_lines: int = 18  # code rows (wrapped lines) a slide shows without metadata, the cut mark included
    output_lines: int = 16  # text output rows a slide shows without metadata, the cut mark included
    tail_lines: int = 3  # of those, the last lines (a final print or assert, a summary), after the cut mark


SCREEN = Screen()
DECK_CSS = f"""
.reveal {{ font-family: "Source Sans Pro", "Noto Sans SC", Helvetica, sans-serif; font-size: {SCREEN.body_px}px; }}
.reveal .slides section {{ line-height: {SCREEN.line}; }}
.reveal .jp-RenderedHTMLCommon {{ font-family: inherit; font-size: 1em; line-height: {SCREEN.line}; color: #222;
  padding-right: 0; }}
.reveal .jp-RenderedHTMLCommon p {{ margin: 0 0 0.5em; line-height: {SCREEN.line}; }}
.reveal .jp-RenderedHTMLCommon ul, .reveal .jp-RenderedHTMLCommon ol {{ margin: 0 0 0.5em 1.3em; padding: 0; }}
.reveal .jp-RenderedHTMLCommon li {{ margin: 0 0 0.15em; line-height: {SCREEN.line}; }}
.reveal .jp-RenderedHTMLCommon li > p {{ margin: 0; }}
.reveal .jp-RenderedHTMLCommon h1, .reveal .jp-RenderedHTMLCommon h2, .reveal .jp-RenderedHTMLCommon h3,
.reveal .jp-RenderedHTMLCommon h4 {{ font-family: inherit; font-weight: 700; text-transform: none; color: #222;
  line-height: 1.2; margin: 0 0 0.4em; }}
.reveal .jp-RenderedHTMLCommon h1 {{ font-size: 1.5em; }}
.reveal .jp-RenderedHTMLCommon h2 {{ font-size: 1.25em; }}
.reveal .jp-RenderedHTMLCommon h3 {{ font-size: 1.1em; }}
.reveal .jp-RenderedHTMLCommon h4 {{ font-size: 1em; }}
.reveal .jp-RenderedHTMLCommon table {{ font-size: {SCREEN.table_px}px; margin: 0 0 0.5em; border-collapse: collapse;
  table-layout: auto; }}
.reveal .jp-RenderedHTMLCommon th, .reveal .jp-RenderedHTMLCommon td {{ padding: 0.2em 0.5em; line-height: 1.3;
  text-align: left; }}
.reveal .jp-RenderedHTMLCommon code {{ font-size: 0.85em; }}
:root {{ --jp-code-font-family: "DejaVu Sans Mono", monospace, "Noto Sans SC"; }}
.reveal pre, .reveal .highlight pre, .reveal div.jp-OutputArea-output > pre, .reveal div.highlight > pre {{
  font-family: "DejaVu Sans Mono", monospace, "Noto Sans SC"; font-size: {SCREEN.code_px}px;
  line-height: {SCREEN.code_line}; white-space: pre-wrap; overflow-wrap: anywhere; width: auto; margin: 0;
  padding: 0.3em; }}
.reveal .jp-InputPrompt, .reveal .jp-OutputPrompt {{ display: none; }}
.reveal .jp-RenderedImage img {{ max-height: {SCREEN.image_max}px; max-width: 100%; width: auto; height: auto;
  margin: 0; }}
.reveal .jp-OutputArea-output {{ overflow: visible; }}
"""


# --- text size estimates (logical px) ---------------------------------------------------------------------------


def _is_wide(ch: str) -> bool:
    return ord(ch) >= 0x2E80  # CJK, full-width punctuation and friends: one em wide


def text_em(text: str) -> float:
    """Rendered width of plain prose in em: CJK characters 1em, others about 0.5em (Source Sans Pro)."""
    return sum(1.0 if _is_wide(ch) else 0.5 for ch in text)


def plain_markdown(text: str) -> str:
    """Markdown inline syntax stripped, roughly as the reader sees it (links to their text, no ** or `)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(
        r"\$([^$]+)\$",
        lambda m: re.sub(r"\\[a-zA-Z]+|[{}^_\\]", "x", m.group(1))[: len(m.group(1)) // 2 + 1],
        text,
    )
    return re.sub(r"\*\*|__|`|<[^>]+>", "", text)


def prose_lines(text: str, px: float, width: float = SCREEN.text_width) -> int:
    """Lines a markdown paragraph (or one list item) wraps to at font size px."""
    flowing = " ".join(line.strip() for line in text.splitlines())  # soft line breaks flow into one paragraph
    return max(1, math.ceil(text_em(plain_markdown(flowing)) * px / width))


def code_rows(text: str, cols: int = SCREEN.code_cols) -> int:
    """Rows a pre-wrapped monospace text takes (CJK characters count as about two columns)."""
    rows = 0
    for line in text.splitlines() or [""]:
        width = sum(1.7 if _is_wide(ch) else 1 for ch in line.expandtabs(4))
        rows += max(1, math.ceil(width / cols))
    return rows


def code_height(text: str) -> float:
    """Height of a code or text-output box."""
    return code_rows(text) * SCREEN.code_px * SCREEN.code_line + 0.6 * SCREEN.code_px + 16


# --- markdown blocks ---------------------------------------------------------------------------------------------


def markdown_blocks(source: str) -> list[str]:
    """Top-level blocks of a markdown cell: headings, paragraphs, lists, tables, fenced code, display math."""
    blocks, cur, fence, in_math = [], [], False, False

    def flush():
        if cur:
            blocks.append("\n".join(cur))
            cur.clear()

    for line in source.splitlines():
        s = line.strip()
        if fence or in_math:
            cur.append(line)
            fence = fence and not s.startswith("```")
            in_math = in_math and not s.endswith("$$")
            if not (fence or in_math):
                flush()
            continue
        if s.startswith("```") or (s.startswith("$$") and not (len(s) > 2 and s.endswith("$$"))):
            flush()
            cur.append(line)
            fence, in_math = s.startswith("```"), s.startswith("$$")
        elif not s:
            flush()
        elif s.startswith("#"):
            flush()
            blocks.append(line)
        elif (
            (s.startswith("|") and cur and not cur[-1].lstrip().startswith("|"))
            or (_is_item(s) and cur and not _is_list(cur))
            or (s.startswith("$$") and s.endswith("$$"))
        ):
            flush()
            cur.append(line)
            if s.startswith("$$"):
                flush()
        else:
            cur.append(line)
    flush()
    return blocks


def _is_item(line: str) -> bool:
    return bool(re.match(r"\s*([-*+]|\d+[.)])\s", line))


def _is_list(lines: list[str]) -> bool:
    return _is_item(lines[0])


def block_kind(block: str) -> str:
    """heading, table, code, math, list or paragraph."""
    s = block.lstrip()
    if s.startswith("#"):
        return "heading"
    if s.startswith("|"):
        return "table"
    if s.startswith("```"):
        return "code"
    if s.startswith("$$"):
        return "math"
    return "list" if _is_item(s) else "paragraph"


def list_items(block: str) -> list[str]:
    """The items of a markdown list, each with its continuation lines."""
    items: list[list[str]] = []
    for line in block.splitlines():
        if _is_item(line) and (not items or not line.startswith((" ", "\t"))):
            items.append([line])
        else:
            items[-1].append(line)
    return ["\n".join(i) for i in items]


def block_height(block: str) -> float:
    """Estimated rendered height of one markdown block."""
    kind, px = block_kind(block), SCREEN.body_px
    if kind == "heading":
        level = len(block) - len(block.lstrip("#"))
        hpx = px * {1: 1.5, 2: 1.25, 3: 1.1}.get(level, 1.0)
        return prose_lines(block.lstrip("# "), hpx) * hpx * 1.2 + 0.4 * hpx
    if kind == "table":
        return table_height(parse_markdown_table(block))
    if kind == "code":
        return code_height("\n".join(block.splitlines()[1:-1]))
    if kind == "math":
        return 2.6 * px * max(1, block.count("\\\\") + 1)
    if kind == "list":
        items = list_items(block)
        width = SCREEN.text_width - 1.3 * px
        return sum(prose_lines(i, px, width) * px * SCREEN.line + 0.15 * px for i in items) + 0.5 * px
    return prose_lines(block, px) * px * SCREEN.line + 0.5 * px


# --- tables ------------------------------------------------------------------------------------------------------


def parse_markdown_table(block: str) -> list[list[str]]:
    """Rows of cell texts (header first); the |---| separator row is dropped."""
    rows = []
    for line in block.strip().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not all(re.fullmatch(r":?-{2,}:?", c) for c in cells):
            rows.append(cells)
    return rows


def markdown_table(rows: list[list[str]]) -> str:
    """Rows (header first) back to a markdown table."""
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows[1:]])


def _column_widths(rows: list[list[str]]) -> list[float]:
    ncol = max(len(r) for r in rows)
    natural = [
        max(text_em(plain_markdown(r[c])) if c < len(r) else 0 for r in rows) * SCREEN.table_px
        for c in range(ncol)
    ]
    avail = SCREEN.text_width - ncol * SCREEN.table_px
    if sum(natural) <= avail:
        return natural
    # auto layout, roughly: short columns keep their width, the long ones share what is left
    fair, fixed, widths = avail / ncol, 0.0, list(natural)
    long_cols = [c for c in range(ncol) if natural[c] > fair]
    fixed = sum(natural[c] for c in range(ncol) if c not in long_cols)
    share = sum(natural[c] for c in long_cols)
    for c in long_cols:
        widths[c] = max(3 * SCREEN.table_px, (avail - fixed) * natural[c] / share)
    return widths


def table_height(rows: list[list[str]]) -> float:
    """Estimated height of a table at the table font size, cells wrapping in auto layout."""
    widths = _column_widths(rows)
    # a table wider than the slide: the browser may wrap any cell (e.g. at a hyphen), so every row gets as many
    # lines as the table is slides wide
    at_least = math.ceil(table_width(rows) / SCREEN.text_width)
    total = 0.0
    for r in rows:
        lines = max(
            at_least,
            *(
                math.ceil(text_em(plain_markdown(c)) * SCREEN.table_px / max(w, 1) - 1e-9)
                for c, w in zip(r, widths, strict=False)
            ),
        )
        total += lines * SCREEN.table_px * 1.3 + 0.4 * SCREEN.table_px + 1
    return total + 0.5 * SCREEN.table_px


def table_width(rows: list[list[str]]) -> float:
    """Width the table needs when no cell wraps."""
    ncol = max(len(r) for r in rows)
    return sum(
        max(text_em(plain_markdown(r[c])) if c < len(r) else 0 for r in rows) * SCREEN.table_px
        + SCREEN.table_px
        for c in range(ncol)
    )


def _fits_across(rows: list[list[str]]) -> bool:
    """Whether a table fits the slide's width, its cells wrapping at spaces (up to about two lines each)."""
    longest_word = [
        max((text_em(w) for r in rows for w in plain_markdown(r[c]).split()), default=0)
        for c in range(len(rows[0]))
    ]
    min_width = sum((em + 1) * SCREEN.table_px for em in longest_word)
    return min_width <= SCREEN.text_width and table_width(rows) <= 2 * SCREEN.text_width


def split_table(rows: list[list[str]], budget: float, keep_cols: int = 1) -> list[list[list[str]]]:
    """A table as several tables that each fit: column groups (repeating the first `keep_cols`), then row chunks."""
    groups, ncol = [], max(len(r) for r in rows)
    rows = [r + [""] * (ncol - len(r)) for r in rows]
    cols = list(range(keep_cols, ncol))
    while cols:
        take = 1
        while take < len(cols) and _fits_across(
            [[r[c] for c in [*range(keep_cols), *cols[: take + 1]]] for r in rows]
        ):
            take += 1
        chosen = [*range(keep_cols), *cols[:take]]
        groups.append([[r[c] for c in chosen] for r in rows])
        cols = cols[take:]
    if not groups:
        groups = [rows]
    return [piece for g in groups for piece in _row_chunks(g[0], g[1:], budget)]


def _row_chunks(header: list[str], body: list[list[str]], budget: float) -> list[list[list[str]]]:
    """Tables of consecutive rows, each within budget, as even in length as fits (no lone last row)."""
    chunks, chunk = [], []
    for row in body:
        if chunk and table_height([header, *chunk, row]) > budget:
            chunks.append(chunk)
            chunk = []
        chunk.append(row)
    chunks.append(chunk)
    size = math.ceil(len(body) / len(chunks))
    even = [body[i : i + size] for i in range(0, len(body), size)] or [[]]
    if len(even) == len(chunks) and all(table_height([header, *c]) <= budget for c in even):
        chunks = even
    return [[header, *c] for c in chunks]


class _TableParser(HTMLParser):
    """Cells of an HTML table as a grid: (text, rowspan, colspan) per <td>/<th>, one list per <tr>."""

    def __init__(self):
        super().__init__()
        self.rows: list[list[tuple[str, int, int]]] = []
        self.cell: list[str] | None = None
        self.span = (1, 1)
        self.header_rows = 0
        self.in_head = False

    def handle_starttag(self, tag, attrs):
        if tag == "thead":
            self.in_head = True
        elif tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            a = dict(attrs)
            self.cell, self.span = [], (int(a.get("rowspan") or 1), int(a.get("colspan") or 1))

    def handle_endtag(self, tag):
        if tag == "thead":
            self.in_head = False
        elif tag == "tr" and self.in_head:
            self.header_rows += 1
        elif tag in ("td", "th") and self.cell is not None and self.rows:
            self.rows[-1].append((" ".join("".join(self.cell).split()), *self.span))
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def parse_html_table(markup: str) -> tuple[list[list[str]], int]:
    """(rows, header row count) of a pandas DataFrame's HTML, row- and column-spans spread over the grid."""
    parser = _TableParser()
    parser.feed(markup)
    grid: dict[tuple[int, int], str] = {}
    for i, row in enumerate(r for r in parser.rows if r):
        j = 0
        for text, rowspan, colspan in row:
            while (i, j) in grid:  # taken by a rowspan from above
                j += 1
            for di in range(rowspan):
                for dj in range(colspan):  # a spanned label repeats, so every split keeps it
                    grid[i + di, j + dj] = text
            j += colspan
    n_rows, n_cols = max((i for i, _ in grid), default=-1) + 1, max((j for _, j in grid), default=-1) + 1
    return [[grid.get((i, j), "") for j in range(n_cols)] for i in range(n_rows)], parser.header_rows


def one_header_row(rows: list[list[str]], header_rows: int) -> list[list[str]]:
    """A DataFrame's header rows (column names, then index names) merged into one row."""
    header = [" ".join(t for t in column if t) for column in zip(*rows[:header_rows], strict=True)]
    return [header, *rows[header_rows:]]


def html_table(rows: list[list[str]], labels: int = 1) -> str:
    """Rows as a plain HTML table: the first row and the first `labels` columns as <th>."""
    out = ['<table class="dataframe">']
    for i, row in enumerate(rows):
        tags = ["th" if i == 0 or j < labels else "td" for j in range(len(row))]
        out.append(
            "<tr>" + "".join(f"<{t}>{escape(c)}</{t}>" for t, c in zip(tags, row, strict=True)) + "</tr>"
        )
    return "\n".join(out + ["</table>"])
