from sft_lessons import figures


def test_course_map_writes_a_png(tmp_path):
    path = figures.course_map(out_dir=tmp_path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
