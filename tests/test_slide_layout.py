"""Slide geometry: markdown blocks, and tables split into pieces that fit the slide (no browser)."""

import pytest

from sft_lessons.course import slide_layout as layout


def test_sizes_count_chinese_as_wide_and_wrap_long_lines():
    assert layout.text_em("中文ab") == 3.0
    assert layout.code_rows("x" * layout.SCREEN.code_cols) == 1
    assert layout.code_rows("x" * (layout.SCREEN.code_cols + 1) + "\n\ny") == 4
    assert layout.code_rows("中" * layout.SCREEN.code_cols) == 2  # a CJK character takes about two columns
    one_line = "字" * int(layout.SCREEN.text_width / layout.SCREEN.body_px)
    assert layout.prose_lines(one_line, layout.SCREEN.body_px) == 1
    assert layout.prose_lines(one_line + "\n字", layout.SCREEN.body_px) == 2  # soft breaks flow on
    assert layout.plain_markdown("**粗** `code` [链接](http://x)") == "粗 code 链接"


def test_markdown_blocks_and_tables():
    md = "## h\n\ntext\nmore\n- a\n- b\n\n| x | y |\n|---|---|\n| 1 | 2 |\n\n$$\na\n$$\n\n```py\nx\n\ny\n```"
    blocks = layout.markdown_blocks(md)
    assert [layout.block_kind(b) for b in blocks] == ["heading", "paragraph", "list", "table", "math", "code"]
    assert layout.list_items(blocks[2]) == ["- a", "- b"]
    assert layout.parse_markdown_table(blocks[3]) == [["x", "y"], ["1", "2"]]


def test_wide_and_long_tables_split_into_tables_that_fit():
    header = ["key"] + [f"column {i} 的说明" for i in range(12)]
    rows = [header] + [[f"row {r}"] + ["一段比较长的单元格文字"] * 12 for r in range(30)]
    parts = layout.split_table(rows, layout.SCREEN.budget)
    assert len(parts) > 4
    assert all(p[0][0] == "key" for p in parts)  # the key column and the header repeat
    assert all(layout.table_width(p) <= layout.SCREEN.text_width or len(p[0]) == 2 for p in parts)
    assert all(layout.table_height(p) <= layout.SCREEN.budget for p in parts)
    assert sorted({c for p in parts for c in p[0]}) == sorted(header)


def test_a_dataframe_with_named_index_levels_keeps_its_column_names_and_labels():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"model": ["a", "b"], "format": ["x", "y"], "score": [1, 2]}).set_index(
        ["model", "format"]
    )
    rows, header_rows = layout.parse_html_table(df.to_html())
    assert header_rows == 2
    merged = layout.one_header_row(rows, header_rows)
    assert merged[0] == ["model", "format", "score"] and merged[1] == ["a", "x", "1"]
    assert "<tr><th>a</th><th>x</th><td>1</td></tr>" in layout.html_table(merged, labels=2)
    df = pd.DataFrame({"model": ["a", "a"], "format": ["x", "y"], "score": [1, 2]}).set_index(
        ["model", "format"]
    )
    rows, header_rows = layout.parse_html_table(df.to_html())  # 'a' spans two rows
    assert rows[header_rows:] == [["a", "x", "1"], ["a", "y", "2"]]
