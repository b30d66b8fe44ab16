"""Slides cut for a screen: a notebook copy as reveal.js slides that each fit 1280x720, what is cut in the notes."""

from __future__ import annotations

import base64
import copy
import itertools
import re
import struct

from .slide_layout import (
    SCREEN,
    block_height,
    block_kind,
    code_height,
    code_rows,
    html_table,
    list_items,
    markdown_blocks,
    markdown_table,
    one_header_row,
    parse_html_table,
    parse_markdown_table,
    split_table,
    table_height,
)

# Cell metadata a notebook may carry to choose what its slides show (the defaults below apply without it):
#   metadata["slides"] = {"code_lines": [[first, last], ...], "output_lines": [[first, last], ...]}
# 1-based, inclusive line ranges of the cell's source / of its text output; the other lines become "…" on the slide
# and stay in the notebook and in the speaker notes.
SLIDES_KEY = "slides"
SPEC_KEYS = ("code_lines", "output_lines")
CUT_MARK = "…"
TEST_MARKER = re.compile(r"#\s*NBVAL_\w+\s*$")


# --- line selection ----------------------------------------------------------------------------------------------


def default_lines(lines: list[str], max_rows: int, tail: int = SCREEN.tail_lines) -> set[int]:
    """Indices of the lines a slide shows without metadata: the first ones and the last `tail`, within max_rows."""
    tail_idx = set(range(max(len(lines) - tail, 0), len(lines)))
    head_rows = max_rows - 1 - sum(code_rows(lines[i]) for i in tail_idx)  # one row for the cut mark
    if head_rows < 1:
        return default_lines(lines, max_rows, 0) if tail else {0}
    rows = itertools.accumulate(code_rows(line) for line in lines)
    return {i for i, r in enumerate(rows) if r <= head_rows} | tail_idx


def select_lines(text: str, ranges, max_rows: int, comment: str) -> tuple[str, bool]:
    """(text shown on the slide, whether lines were cut): the 1-based inclusive `ranges`, or default_lines."""
    lines = text.rstrip("\n").splitlines()
    if comment and lines and TEST_MARKER.match(lines[0]):  # nbval's marker: for the tests, not the audience
        shown, cut = select_lines("\n".join(lines[1:]), _shift(ranges), max_rows, comment)
        return shown, cut
    if ranges:
        keep = {i for a, b in ranges for i in range(a - 1, min(b, len(lines)))}
    elif code_rows("\n".join(lines)) <= max_rows:
        return "\n".join(lines), False
    else:
        keep = default_lines(lines, max_rows)
    shown, gap = [], 0
    for i, line in enumerate(lines):
        if i in keep:
            if gap:
                shown.append(f"{comment}{CUT_MARK}（{gap} 行见笔记本）")
            shown.append(line)
            gap = 0
        else:
            gap += 1
    if gap:
        shown.append(f"{comment}{CUT_MARK}（{gap} 行见笔记本）")
    return "\n".join(shown), len(keep) < len(lines)


def _shift(ranges):
    """Line ranges of a cell counted after its first line is dropped."""
    return [[max(a - 1, 1), b - 1] for a, b in ranges if b > 1] if ranges else ranges


# --- outputs -----------------------------------------------------------------------------------------------------


def merge_streams(outputs: list) -> list:
    """Consecutive stream outputs of the same name merged into one (kernels split them arbitrarily)."""
    merged = []
    for out in outputs:
        if (
            out.output_type == "stream"
            and merged
            and merged[-1].output_type == "stream"
            and merged[-1].name == out.name
        ):
            merged[-1] = copy.deepcopy(merged[-1])
            merged[-1].text += out.text
        else:
            merged.append(out)
    return merged


def _png_size(out) -> tuple[int, int]:
    head = base64.b64decode(out.data["image/png"][:64])
    w, h = struct.unpack(">II", head[16:24])
    shown_w = out.get("metadata", {}).get("image/png", {}).get("width", w)
    return shown_w, h * shown_w / w


def output_pieces(out, ranges) -> list[tuple[object, float, bool]]:
    """One output as (output shown, height, cut) pieces that each fit a slide."""
    data = out.get("data", {})
    if out.output_type == "stream" or (set(data) == {"text/plain"}):
        key_text = out.text if out.output_type == "stream" else data["text/plain"]
        shown, cut = select_lines(key_text, ranges, SCREEN.output_lines, "")
        new = copy.deepcopy(out)
        if out.output_type == "stream":
            new.text = shown + "\n"
        else:
            new.data = {"text/plain": shown}
        return [(new, code_height(shown), cut)]
    if "image/png" in data:
        w, h = _png_size(out)
        width = min(w, SCREEN.width - 20)
        return [(out, min(h * width / w, SCREEN.image_max) + 12, False)]
    if "text/html" in data and "<table" in data["text/html"]:
        rows, header_rows = parse_html_table(data["text/html"])
        if rows and len({len(r) for r in rows}) == 1:
            pieces = []
            labels = max(1, len(list(itertools.takewhile(lambda c: c == "", rows[0]))))  # the index columns
            for part in split_table(one_header_row(rows, header_rows), SCREEN.budget - 40, keep_cols=labels):
                new = copy.deepcopy(out)
                new.data = {"text/html": html_table(part, labels)}
                pieces.append((new, table_height(part), False))
            return pieces
    if "text/plain" in data:
        return output_pieces(_as_text(out), ranges)
    return [(out, 200.0, False)]


def _as_text(out):
    new = copy.deepcopy(out)
    new.data = {"text/plain": out.data["text/plain"]}
    return new


# --- the cut -----------------------------------------------------------------------------------------------------


class _Deck:
    """Cells of the slide copy, with the estimated height of the slide being filled."""

    def __init__(self, nbformat):
        self.nbf, self.cells, self.used = nbformat, [], 0.0

    def add(self, cell, height: float, kind: str) -> None:
        """Append a cell: 'slide' and 'subslide' start a slide; '-' and 'fragment' continue it if it fits."""
        cell.id = f"s{len(self.cells)}"  # the copies of one cell need ids of their own
        if kind in ("-", "fragment") and self.used + height > SCREEN.budget:
            kind = "subslide"
        cell.metadata.setdefault("slideshow", {})["slide_type"] = kind
        self.used = height if kind in ("slide", "subslide") else self.used + height
        self.cells.append(cell)

    def note(self, text: str) -> None:
        """Speaker notes for the slide just added."""
        if text.strip():
            cell = self.nbf.v4.new_markdown_cell(text, metadata={"slideshow": {"slide_type": "notes"}})
            cell.id = f"s{len(self.cells)}"
            self.cells.append(cell)


def slide_kind(cell) -> str:
    """The cell's reveal.js slide_type ('-' when unset)."""
    return cell.get("metadata", {}).get("slideshow", {}).get("slide_type", "-") or "-"


def split_block(block: str, budget: float) -> list[str]:
    """A markdown block too tall for one slide as several that fit: sentences, list items or table rows."""
    kind = block_kind(block)
    if kind == "table":
        return [markdown_table(p) for p in split_table(parse_markdown_table(block), budget)]
    if kind == "list":
        units = list_items(block)
        parts = [
            u
            for item in units
            for u in (split_prose(item, budget) if block_height(item) > budget else [item])
        ]
        return _pack(parts, budget, "\n")
    if kind == "paragraph":
        return split_prose(block, budget)
    if kind == "code":
        lines = block.splitlines()
        shown, _ = select_lines("\n".join(lines[1:-1]), None, SCREEN.code_lines, "# ")
        return ["\n".join([lines[0], shown, lines[-1]])]
    return [block]


def split_prose(text: str, budget: float) -> list[str]:
    """A paragraph (or list item) as pieces of whole sentences that each fit `budget`."""
    units = [
        u
        for u in re.findall(r".+?(?:[。！？；](?!\))|[.!?;](?=\s)|$)\s*", text.replace("\n", " "))
        if u.strip()
    ]
    return _pack(units, budget, "") if len(units) > 1 else [text]


def _pack(units: list[str], budget: float, sep: str) -> list[str]:
    parts, cur = [], ""
    for u in units:
        trial = cur + sep + u if cur else u
        if cur and block_height(trial) > budget:
            parts.append(cur)
            cur = u
        else:
            cur = trial
    return parts + [cur] if cur else parts


def paginate(blocks: list[str], used: float = 0.0) -> list[list[str]]:
    """Blocks grouped into slides within SCREEN.budget; the first group continues a slide already `used` px full."""
    # a heading starts a slide (unless it opens one) and is never the last block of a slide
    pieces: list[list[str]] = [[]]
    for i, block in enumerate(blocks):
        heading = block_kind(block) == "heading"
        need = block_height(block) + (block_height(blocks[i + 1]) if heading and i + 1 < len(blocks) else 0)
        if (pieces[-1] or used) and (used + need > SCREEN.budget or (heading and pieces[-1])):
            pieces.append([])
            used = 0.0
        pieces[-1].append(block)
        used += block_height(block)
    return pieces


def cut_markdown(deck: _Deck, cell, kind: str, after_code: bool) -> None:
    """A markdown cell as one or more slides; its full text goes to the notes whenever it was split."""
    blocks, above = [], 0.0
    for block in markdown_blocks(cell.source):
        limit = SCREEN.budget - above  # a block too tall is split, leaving room for the heading above it
        blocks += split_block(block, limit) if block_height(block) > limit else [block]
        above = block_height(block) if block_kind(block) == "heading" else 0.0
    if after_code and kind in ("-", "fragment"):
        kind = "subslide"  # prose after a result is the next point: a new slide
    pieces = paginate(blocks, 0.0 if kind in ("slide", "subslide") else deck.used)
    if not pieces[0]:  # nothing of it fits on the slide it continues
        kind, pieces = "subslide", pieces[1:]
    for i, group in enumerate(pieces):
        md = deck.nbf.v4.new_markdown_cell("\n\n".join(group), metadata=copy.deepcopy(cell.metadata))
        md.metadata.pop(SLIDES_KEY, None)
        deck.add(md, sum(block_height(b) for b in group), kind if i == 0 else "subslide")
        if len(pieces) > 1 or group != markdown_blocks(cell.source):
            deck.note(cell.source)  # the whole section's prose, wherever the presenter is in it


def slide_spec(cell) -> dict:
    """The cell's metadata["slides"], checked: known keys, each a list of 1-based [first, last] line ranges."""
    spec = cell.get("metadata", {}).get(SLIDES_KEY, {})
    for key, ranges in spec.items():
        if key not in SPEC_KEYS:
            raise ValueError(
                f"cell {cell.get('id')}: metadata slides key {key!r}; known: {', '.join(SPEC_KEYS)}"
            )
        if not all(isinstance(r, list) and len(r) == 2 and 1 <= r[0] <= r[1] for r in ranges):
            raise ValueError(
                f"cell {cell.get('id')}: metadata slides {key}={ranges!r}; want [[first, last], ...], 1-based"
            )
    return spec


def cut_code(deck: _Deck, cell) -> None:
    """A code cell on a new slide: its (trimmed) code, then its outputs, on further slides when they do not fit."""
    spec = slide_spec(cell)
    source, code_cut = select_lines(cell.source, spec.get("code_lines"), SCREEN.code_lines, "# ")
    shown = copy.deepcopy(cell)
    shown.source, shown.outputs = source, []
    shown.metadata.pop(SLIDES_KEY, None)
    deck.add(shown, code_height(source) + 30, "subslide")
    notes = [f"完整代码：\n\n```python\n{cell.source}\n```"] if code_cut else []
    target = shown
    for out in merge_streams(cell.outputs):
        for piece, height, cut in output_pieces(out, spec.get("output_lines")):
            if deck.used + height + 20 > SCREEN.budget:
                deck.note("\n\n".join(notes))
                notes = []
                target = copy.deepcopy(shown)
                target.source, target.outputs = "", []
                # nbconvert renders the outputs only
                target.metadata["transient"] = {"remove_source": True}
                deck.add(target, 0.0, "subslide")
            target.outputs.append(piece)
            deck.used += height + 20
            if cut:
                full = out.text if out.output_type == "stream" else out.data["text/plain"]
                notes.append(f"完整输出：\n\n```\n{full.rstrip()}\n```")
    deck.note("\n\n".join(notes))


def cut_for_screen(nb):
    """A copy of the notebook whose cells are reveal.js slides that each fit SCREEN; the notebook is not changed."""
    import nbformat

    deck = _Deck(nbformat)
    out = copy.deepcopy(nb)
    prev_code = False
    for cell in nb.cells:
        kind = slide_kind(cell)
        if kind == "skip":
            continue
        if cell.cell_type == "code":
            cut_code(deck, cell)
        elif cell.cell_type == "markdown" and kind != "notes":
            cut_markdown(deck, cell, kind, prev_code)
        else:
            deck.cells.append(copy.deepcopy(cell))
        prev_code = cell.cell_type == "code"
    out.cells = deck.cells
    return out
