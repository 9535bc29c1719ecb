"""Parser rules and errors of the DeepFashion-C annotation reader."""

from pathlib import Path

import numpy as np
import pytest

from dftree import FILES, NAMES, pad, with_line, write_tree
from vfu_nb.data.annotations import (
    AnnotationError, annotation_paths, load_annotations, read_partition, read_records, read_vocabulary,
)

SHARED = Path(__file__).resolve().parents[2] / "shared"
META = SHARED / "deepfashion_meta"
SAMPLE = SHARED / "deepfashion_sample"


def test_fields_of_the_tiny_tree(tmp_path):
    a = load_annotations(write_tree(tmp_path))
    assert list(a.image_names) == NAMES
    assert list(a.split) == ["train", "val", "test"]
    assert a.category.dtype == np.int64 and list(a.category) == [0, 1, 2]
    assert a.category_names == ["Tee", "Shorts", "Dress", "Cape"] and list(a.category_types) == [1, 2, 3, 3]
    assert list(a.clothes_type) == [1, 2, 3]
    assert a.attributes.dtype == np.int8
    np.testing.assert_array_equal(a.attributes[1], [-1, 1, -1, 0, -1])
    assert a.attribute_names[2] == "a-line" and a.attribute_names[4] == "boho chic"
    assert list(a.attribute_types) == [1, 2, 3, 4, 5]
    # 1-based inclusive 011 021 090 100 -> 0-based half-open 10 20 90 100
    np.testing.assert_array_equal(a.bbox[0], [10, 20, 90, 100])
    np.testing.assert_array_equal(a.bbox[1], [0, 0, 60, 80])


def test_landmarks_fill_fixed_slots_by_clothes_type(tmp_path):
    a = load_annotations(write_tree(tmp_path))
    # upper: collar, sleeve, hem -> slots 0,1,2,3,6,7; waistline slots absent (-1)
    np.testing.assert_array_equal(a.landmark_visibility[0], [0, 0, 1, 0, -1, -1, 0, 2])
    np.testing.assert_array_equal(a.landmarks[0, 2], [15, 50])
    np.testing.assert_array_equal(a.landmarks[0, 7], [70, 99])
    # lower: waistline, hem -> slots 4..7
    np.testing.assert_array_equal(a.landmark_visibility[1], [-1, -1, -1, -1, 0, 0, 0, 1])
    np.testing.assert_array_equal(a.landmarks[1, 4], [10, 10])
    # full: all 8 in order
    np.testing.assert_array_equal(a.landmarks[2, :, 0], [40, 60, 25, 75, 40, 60, 30, 70])


def test_rows_are_joined_on_image_name_not_position(tmp_path):
    lines = FILES["Anno/list_bbox.txt"]
    shuffled = lines[:2] + [lines[4], lines[2], lines[3]]
    a = load_annotations(write_tree(tmp_path, {"Anno/list_bbox.txt": shuffled}))
    np.testing.assert_array_equal(a.bbox[2], [20, 10, 80, 120])


def test_anno_coarse_folder_is_accepted(tmp_path):
    write_tree(tmp_path)
    (tmp_path / "Anno").rename(tmp_path / "Anno_coarse")
    assert annotation_paths(tmp_path)["bbox"].parent.name == "Anno_coarse"
    assert len(load_annotations(tmp_path)) == 3


BOX_RULE = "bounding box must satisfy 0 <= x_1 <= x_2 and 0 <= y_1 <= y_2"


@pytest.mark.parametrize("rel, line_no, text, problem, shown", [
    ("Anno/list_category_img.txt", 1, "4", "count line says 4 records but the file holds 3", None),
    ("Anno/list_category_img.txt", 1, "three", "first line must be the record count", None),
    ("Anno/list_category_img.txt", 4, pad(NAMES[1]) + "2 7", "expected 2 fields, found 3", None),
    ("Anno/list_category_img.txt", 5, pad(NAMES[2]) + "9", "category label 9 out of range 1..4", None),
    ("Anno/list_category_img.txt", 3, pad(NAMES[0]) + "x1", "expected an integer, found 'x1'", None),
    ("Anno/list_category_img.txt", 3, pad(NAMES[0]) + "1:", "expected an integer, found '1:'", None),
    ("Anno/list_category_img.txt", 3, pad(NAMES[0]) + "1!2", "expected an integer, found '1!2'", None),
    ("Anno/list_category_img.txt", 4, pad(NAMES[1]) + "1234567890", "expected an integer, found '1234567890'", None),
    ("Anno/list_attr_img.txt", 4, pad(NAMES[1]) + "-1  1 -1  0", "expected 6 fields, found 5", None),
    ("Anno/list_attr_img.txt", 5, pad(NAMES[2]) + "-1 -1  2  1  1", "attribute labels must be 1, -1 or 0", None),
    ("Anno/list_bbox.txt", 3, pad(NAMES[0]) + "090 021 011 100", BOX_RULE, None),
    ("Anno/list_bbox.txt", 3, pad(NAMES[0]) + "011 100 090 021", BOX_RULE, None),
    ("Anno/list_bbox.txt", 4, pad(NAMES[1]) + "-01 001 060 080", BOX_RULE, None),
    ("Anno/list_bbox.txt", 5, pad(NAMES[2]) + "021 011 080 1x0", "expected an integer, found '1x0'", None),
    ("Anno/list_landmarks.txt", 4, pad(NAMES[1]) + "2  0 010 010  0 050 010  0 012 070",
     "clothes_type 2 needs 4 (visibility x y) triples (14 fields), found 11 fields", None),
    ("Anno/list_landmarks.txt", 4, pad(NAMES[1]) + "2  0 010 010  0 050 010  0 012 070  3 048 075 ",
     "landmark visibility must be 0, 1 or 2", None),
    ("Anno/list_landmarks.txt", 4, pad(NAMES[1]) + "4  0 010 010", "clothes_type 4 out of range 1..3", None),
    ("Anno/list_landmarks.txt", 4, NAMES[1], "missing clothes_type", None),
    ("Anno/list_landmarks.txt", 3, pad(NAMES[0]) + "2  0 010 010  0 050 010  0 012 070  1 048 075",
     "clothes_type 2 differs from its category's type 1", None),
    ("Eval/list_eval_partition.txt", 4, pad(NAMES[1]) + "valid",
     "evaluation status must be one of ('train', 'val', 'test')", None),
    ("Eval/list_eval_partition.txt", 4, pad(NAMES[1]) + "val extra", "expected 2 fields, found 3", None),
    ("Anno/list_attr_cloth.txt", 6, "v-neck                       9", "attribute_type must be 1..5", "v-neck"),
    ("Anno/list_attr_cloth.txt", 6, "v-neck                       6", "attribute_type must be 1..5", "v-neck"),
    ("Anno/list_category_cloth.txt", 4, "Shorts         4", "category_type must be 1..3", "Shorts"),
    ("Anno/list_category_cloth.txt", 4, "Shorts", "expected '<name> <type>'", None),
])
def test_bad_input_names_file_line_and_text(tmp_path, rel, line_no, text, problem, shown):
    write_tree(tmp_path, with_line(rel, line_no, text), images=False)
    with pytest.raises(AnnotationError) as err:
        load_annotations(tmp_path)
    assert str(err.value) == f"{tmp_path / rel}:{line_no}: {problem}: {text if shown is None else shown!r}"
    assert isinstance(err.value, ValueError)


def test_missing_file_is_named(tmp_path):
    write_tree(tmp_path, {"Anno/list_landmarks.txt": None}, images=False)
    with pytest.raises(AnnotationError, match=r"list_landmarks\.txt: annotation file not found"):
        load_annotations(tmp_path)


def test_image_missing_from_another_file(tmp_path):
    lines = FILES["Anno/list_bbox.txt"]
    write_tree(tmp_path, {"Anno/list_bbox.txt": ["2", lines[1], lines[2], lines[4]]}, images=False)
    with pytest.raises(AnnotationError, match=r"list_bbox\.txt: image img/Denim_Shorts/img_00000001\.jpg "
                                              r"\(line 4 of list_category_img\.txt\) is missing"):
        load_annotations(tmp_path)


@pytest.mark.parametrize("rel", ["Anno/list_attr_img.txt", "Anno/list_landmarks.txt", "Eval/list_eval_partition.txt"])
def test_image_missing_from_any_per_image_file(tmp_path, rel):
    lines = FILES[rel]
    write_tree(tmp_path, {rel: ["2"] + lines[1:3] + lines[4:]}, images=False)
    with pytest.raises(AnnotationError) as err:
        load_annotations(tmp_path)
    assert str(err.value) == (f"{tmp_path / rel}: image img/Denim_Shorts/img_00000001.jpg (line 4 of "
                              f"list_category_img.txt) is missing from this file")


def test_image_absent_from_the_category_file(tmp_path):
    extra = pad("img/Other/img_00000001.jpg") + "train"
    lines = FILES["Eval/list_eval_partition.txt"]
    write_tree(tmp_path, {"Eval/list_eval_partition.txt": ["4"] + lines[1:] + [extra]}, images=False)
    with pytest.raises(AnnotationError, match=r"list_eval_partition\.txt:6: image is absent from "
                                              r"list_category_img\.txt: 'img/Other"):
        load_annotations(tmp_path)


def test_duplicate_image_is_an_error(tmp_path):
    lines = FILES["Anno/list_category_img.txt"]
    write_tree(tmp_path, {"Anno/list_category_img.txt": lines[:4] + [lines[3]]}, images=False)
    with pytest.raises(AnnotationError, match=r"list_category_img\.txt:5: image listed twice"):
        load_annotations(tmp_path)


def test_excerpt_counts_are_an_error_unless_told(tmp_path):
    path = tmp_path / "list_bbox.txt"
    path.write_text("289222\nimage_name  x_1  y_1  x_2  y_2\n" + pad(NAMES[0]) + "001 001 200 200\n")
    with pytest.raises(AnnotationError, match=r"list_bbox\.txt:1: count line says 289222 records"):
        read_records(path)
    assert read_records(path, strict_count=False).table(4).tolist() == [[1, 1, 200, 200]]


def test_crlf_and_trailing_spaces_are_tolerated(tmp_path):
    path = tmp_path / "list_category_img.txt"
    path.write_bytes(b"2\r\nimage_name  category_label\r\n" + pad(NAMES[0]).encode() + b"3   \r\n"
                     + pad(NAMES[1]).encode() + b"18\r\n\r\n")
    rec = read_records(path)
    assert list(rec.names) == NAMES[:2] and rec.table(1).ravel().tolist() == [3, 18]


def test_parse_is_vectorised_across_chunks(tmp_path):
    """More rows than one parsing chunk: values and line numbers stay right."""
    n = 40000
    rows = [pad(f"img/F/img_{i:08d}.jpg") + f"{i % 50 + 1:d}" for i in range(n)]
    path = tmp_path / "list_category_img.txt"
    path.write_text(f"{n}\nimage_name  category_label\n" + "\n".join(rows) + "\n")
    rec = read_records(path)
    assert rec.table(1).ravel().tolist() == [i % 50 + 1 for i in range(n)]
    rows[33000] = pad("img/F/img_00033000.jpg") + "1-2"
    path.write_text(f"{n}\nimage_name  category_label\n" + "\n".join(rows) + "\n")
    with pytest.raises(AnnotationError, match=r"list_category_img\.txt:33003: expected an integer, found '1-2'"):
        read_records(path)


@pytest.mark.skipif(not META.is_dir(), reason="../shared/deepfashion_meta is absent")
def test_real_vocabulary_files():
    cats, ctypes = read_vocabulary(META / "list_category_cloth.txt")
    assert len(cats) == 50 and cats[0] == "Anorak" and cats[-1] == "Sundress"
    assert np.bincount(ctypes).tolist() == [0, 20, 16, 14]
    attrs, atypes = read_vocabulary(META / "list_attr_cloth.txt")
    assert len(attrs) == 1000 and len(set(attrs)) == 1000
    assert np.bincount(atypes).tolist() == [0, 156, 218, 180, 216, 230]
    assert attrs[446] == "grunge" and atypes[446] == 5
    assert sum(" " in a for a in attrs) == 322


@pytest.mark.skipif(not SAMPLE.is_dir(), reason="../shared/deepfashion_sample is absent")
def test_real_sample_rows():
    with pytest.raises(AnnotationError, match="count line says 289222 records but the file holds 9"):
        read_records(SAMPLE / "Anno/list_bbox.excerpt.txt")
    box = read_records(SAMPLE / "Anno/list_bbox.excerpt.txt", strict_count=False)
    cat = read_records(SAMPLE / "Anno/list_category_img.excerpt.txt", strict_count=False)
    names, status = read_partition(SAMPLE / "Eval/list_eval_partition.excerpt.txt", strict_count=False)
    assert list(cat.names) == list(box.names) == list(names)
    assert cat.table(1).ravel().tolist() == [3, 3, 3, 18, 18, 18, 19, 19, 19]
    assert box.table(4)[0].tolist() == [72, 79, 232, 273]
    assert box.table(4)[4].tolist() == [1, 1, 200, 200]
    assert set(status) <= {"train", "val", "test"}


def test_write_annotations_is_the_inverse_of_load(tmp_path):
    a = load_annotations(write_tree(tmp_path / "a", images=False))
    from vfu_nb.data.annotations import write_annotations
    write_annotations(tmp_path / "b", a)
    b = load_annotations(tmp_path / "b")
    for field in ("image_names", "split", "clothes_type", "category", "category_types", "attributes",
                  "attribute_types", "bbox", "landmarks", "landmark_visibility"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
    assert a.attribute_names == b.attribute_names and a.category_names == b.category_names
    # byte-level layout of the real files
    lm = (tmp_path / "b/Anno/list_landmarks.txt").read_text().splitlines()[2]
    assert lm == pad(NAMES[0]) + " 1  0 040 030  0 060 030  1 015 050  0 085 050  0 030 095  2 070 099 "
    attr = (tmp_path / "b/Anno/list_attr_img.txt").read_text().splitlines()[3]
    assert attr == pad(NAMES[1]) + "-1  1 -1  0 -1"
    box = (tmp_path / "b/Anno/list_bbox.txt").read_text().splitlines()[2]
    assert box == pad(NAMES[0]) + "011 021 090 100"
    assert (tmp_path / "b/Anno/list_category_cloth.txt").read_text().splitlines()[2] == "Tee            1"


@pytest.mark.skipif(not META.is_dir(), reason="../shared/deepfashion_meta is absent")
def test_written_category_vocabulary_is_byte_identical_to_the_real_file(tmp_path):
    from vfu_nb.data.annotations import write_annotations
    a = load_annotations(write_tree(tmp_path / "a", images=False))
    a.category_names, a.category_types = read_vocabulary(META / "list_category_cloth.txt")
    write_annotations(tmp_path / "b", a)
    assert (tmp_path / "b/Anno/list_category_cloth.txt").read_bytes() == (META / "list_category_cloth.txt").read_bytes()


def test_pad_name_puts_the_next_field_at_column_71():
    from vfu_nb.data.annotations import pad_name
    assert pad_name("img/a/img_00000001.jpg") == "img/a/img_00000001.jpg".ljust(71)
    long = "img/" + "x" * 70 + "/img_00000001.jpg"
    assert pad_name(long) == long + " "


# ---------------------------------------------------------------------------------------------------------
# robustness: row order, count lines off either way, every visibility code


def _rotated(rel):
    """The records of ``rel`` in another order (last first)."""
    lines = FILES[rel]
    return {rel: lines[:2] + [lines[-1]] + lines[2:-1]}


def test_every_per_image_file_may_list_its_rows_in_its_own_order(tmp_path):
    want = load_annotations(write_tree(tmp_path / "a", images=False))
    shuffled = {}
    for rel in ("Anno/list_attr_img.txt", "Anno/list_bbox.txt", "Anno/list_landmarks.txt",
                "Eval/list_eval_partition.txt"):
        shuffled.update(_rotated(rel))
    lines = FILES["Anno/list_landmarks.txt"]                 # landmarks once more, in a third order
    shuffled["Anno/list_landmarks.txt"] = lines[:2] + [lines[3], lines[4], lines[2]]
    got = load_annotations(write_tree(tmp_path / "b", shuffled, images=False))
    for field in ("image_names", "split", "clothes_type", "category", "attributes", "bbox", "landmarks",
                  "landmark_visibility"):
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field), err_msg=field)


@pytest.mark.parametrize("rel", ["Anno/list_category_img.txt", "Anno/list_attr_img.txt", "Anno/list_bbox.txt",
                                 "Anno/list_landmarks.txt", "Eval/list_eval_partition.txt",
                                 "Anno/list_category_cloth.txt", "Anno/list_attr_cloth.txt"])
@pytest.mark.parametrize("delta", [-1, 1])
def test_a_count_line_off_in_either_direction_is_an_error(tmp_path, rel, delta):
    lines = list(FILES[rel])
    rows = len(lines) - 2
    lines[0] = str(rows + delta)
    write_tree(tmp_path, {rel: lines}, images=False)
    with pytest.raises(AnnotationError, match=rf"{Path(rel).name}:1: count line says {rows + delta} records but "
                                              rf"the file holds {rows}: '{rows + delta}'$"):
        load_annotations(tmp_path)
    assert len(load_annotations(tmp_path, strict_count=False)) == 3


def test_every_visibility_code_and_only_those(tmp_path):
    lines = list(FILES["Anno/list_landmarks.txt"])
    lines[4] = pad(NAMES[2]) + "3  0 040 020  1 060 020  2 025 040  0 075 040  1 040 060  2 060 060  0 030 110  1 070 110 "
    a = load_annotations(write_tree(tmp_path / "ok", {"Anno/list_landmarks.txt": lines}, images=False))
    assert a.landmark_visibility.tolist() == [[0, 0, 1, 0, -1, -1, 0, 2], [-1, -1, -1, -1, 0, 0, 0, 1],
                                              [0, 1, 2, 0, 1, 2, 0, 1]]
    assert a.landmarks[0, 4:6].tolist() == [[0, 0], [0, 0]]          # absent slots hold (0, 0)
    for code in ("-1", "3", "9"):
        bad = list(lines)
        bad[4] = bad[4].replace("  2 060 060", f"  {code} 060 060")
        write_tree(tmp_path / code, {"Anno/list_landmarks.txt": bad}, images=False)
        with pytest.raises(AnnotationError, match=r"list_landmarks\.txt:5: landmark visibility must be 0, 1 or 2"):
            load_annotations(tmp_path / code)


# ---------------------------------------------------------------------------------------------------------
# the label fast paths (aligned columns, single-digit tokens) agree with the general tokeniser


def _label_lines(rng, n, a, layout):
    values = rng.choice(np.array([-1, 0, 1]), (n, a))
    names = [f"img/Look_{i % 7}/img_{i:08d}.jpg" for i in range(n)]
    if layout == "aligned":
        from vfu_nb.data.annotations import _label_bytes, pad_name
        rows = [pad_name(name) + _label_bytes(values[i:i + 1].astype(np.int8))[0].tobytes().decode()
                for i, name in enumerate(names)]
    elif layout == "single spaces":
        rows = [name + " " + " ".join(str(v) for v in row) for name, row in zip(names, values)]
    else:                                   # tabs, runs of spaces and trailing blanks
        rows = [name + "\t " + "".join(f"{v}{' ' * (1 + (i + j) % 3)}" for j, v in enumerate(row)) + "\t"
                for i, (name, row) in enumerate(zip(names, values))]
    return names, values, rows


def _read_both(path):
    """(names, counts, values) or the error message, from the label fast paths and from the general tokeniser."""
    out = []
    for labels in (True, False):
        try:
            rec = read_records(path, labels=labels)
            out.append((rec.names.tolist(), rec.counts.tolist(), rec.values.astype(int).tolist()))
        except AnnotationError as err:
            out.append(str(err))
    return out


@pytest.mark.parametrize("layout", ["aligned", "single spaces", "tabs and runs"])
@pytest.mark.parametrize("newline", ["\n", "\r\n"])
@pytest.mark.parametrize("n", [11, 12])
def test_label_rows_read_the_same_in_every_layout(tmp_path, monkeypatch, layout, newline, n):
    from vfu_nb.data import annotations

    monkeypatch.setattr(annotations, "_CHUNK_LINES", 4)            # several chunks, the last one short or full
    rng = np.random.default_rng(len(layout) + len(newline))
    names, values, rows = _label_lines(rng, n, 6, layout)
    path = tmp_path / "list_attr_img.txt"
    path.write_bytes((newline.join([str(n), "image_name  attribute_labels"] + rows) + newline).encode())
    fast, general = _read_both(path)
    assert fast == general == (names, [6] * n, values.ravel().tolist())


@pytest.mark.parametrize("token", ["2", "-2", "+1", "1-", "--1", "-", "10", "01", "x", "1x", "-0", "!", "1!"])
def test_odd_label_tokens_are_read_or_refused_as_the_general_tokeniser_does(tmp_path, token):
    rng = np.random.default_rng(1)
    for layout in ("aligned", "single spaces"):
        names, values, rows = _label_lines(rng, 5, 4, layout)
        rows[3] = rows[3][:-2] + (" " if layout == "single spaces" else "") + token.rjust(2)
        path = tmp_path / f"{layout}.txt"
        path.write_text("\n".join(["5", "header"] + rows) + "\n")
        fast, general = _read_both(path)
        assert fast == general, (layout, token)
        if isinstance(general, str):
            assert f"{layout}.txt:6: expected an integer, found {token!r}" in general


def test_label_rows_with_a_name_only_or_spaces_in_odd_places(tmp_path):
    for body in (["img/a.jpg 1 -1", "img/b.jpg"],             # a record without labels
                 ["img/a.jpg 1 -1", "img/b.jpg  -1  1  "],     # trailing spaces
                 ["img/a.jpg 1 -1", "img/b.jpg 1 - 1"]):       # a lone minus sign
        path = tmp_path / "labels.txt"
        path.write_text("\n".join(["2", "header"] + body) + "\n")
        fast, general = _read_both(path)
        assert fast == general, body


def test_the_real_label_layout_takes_the_fast_paths():
    """The whole-matrix path must take files in the real layout (the slow paths would take minutes on
    289,222 x 1,000 labels) and hand anything else on."""
    from vfu_nb.data.annotations import _parse_aligned_labels, _parse_label_chunk

    rng = np.random.default_rng(3)
    for n in (1, 5):
        names, values, rows = _label_lines(rng, n, 7, "aligned")
        parsed = _parse_aligned_labels(np.frombuffer("\n".join(rows).encode(), np.uint8))
        assert parsed is not None, n
        assert parsed[0].tolist() == names and parsed[1].tolist() == [7] * n
        assert parsed[2].tolist() == values.ravel().tolist()
    names, values, rows = _label_lines(rng, 4, 7, "aligned")
    spaced = rows[:1] + [rows[1].replace("  ", " ", 1)] + rows[2:]
    for changed in (spaced,                                              # one row shorter
                    rows[:3] + [rows[3][:-2] + "-0"],                    # "-0"
                    rows[:3] + [rows[3][:-2] + " 2"],                    # a digit other than 0/1
                    rows[:3] + [rows[3][:-3] + "+ 1"],                   # a sign other than '-'
                    rows[:3] + [rows[3][:-3] + "1 1"],                   # no gap between labels
                    rows[:3] + ["x" * 71 + rows[3][71:]],                # the name runs into the label columns
                    rows[:3] + ["img/a b.jpg".ljust(71) + rows[3][71:]],   # a space inside the name
                    rows[:3] + [" " * 71 + rows[3][71:]]):               # no name
        assert _parse_aligned_labels(np.frombuffer("\n".join(changed).encode(), np.uint8)) is None, changed[-1]
    names, values, rows = _label_lines(rng, 3, 5, "single spaces")
    parsed = _parse_label_chunk(np.frombuffer("\n".join(rows).encode(), np.uint8))
    assert parsed is not None and parsed[0].tolist() == names and parsed[2].tolist() == values.ravel().tolist()
    assert parsed[1].tolist() == [5, 5, 5]
    for changed in (rows[:2] + [rows[2] + " 10"], rows[:2] + [rows[2] + " -"], rows[:2] + ["img/c.jpg"]):
        assert _parse_label_chunk(np.frombuffer("\n".join(changed).encode(), np.uint8)) is None, changed[-1]


def test_an_image_listed_twice_in_any_file_is_named(tmp_path):
    lines = FILES["Anno/list_bbox.txt"]
    write_tree(tmp_path, {"Anno/list_bbox.txt": ["4"] + lines[1:] + [lines[2]]}, images=False)
    with pytest.raises(AnnotationError, match=r"list_bbox\.txt:6: image listed twice: 'img/Striped_Knit_Tee/img_00000001\.jpg'$"):
        load_annotations(tmp_path)


def test_the_first_extra_image_by_line_is_named(tmp_path):
    lines = FILES["Anno/list_bbox.txt"]
    extra = [pad("img/Zebra/img_00000001.jpg") + "001 001 050 050", pad("img/Aardvark/img_00000001.jpg") + "001 001 050 050"]
    write_tree(tmp_path, {"Anno/list_bbox.txt": ["5"] + lines[1:] + extra}, images=False)
    with pytest.raises(AnnotationError, match=r"list_bbox\.txt:6: image is absent from list_category_img\.txt: 'img/Zebra"):
        load_annotations(tmp_path)


# ---------------------------------------------------------------------------------------------------------
# heads, empty bodies, odd bytes, every field's type


@pytest.mark.parametrize("content, line, problem", [
    *[(head, 1, "expected a count line and a header line") for head in (b"3", b"3\n")],
    (b"\nheader\nimg/a.jpg 1\n", 1, "first line must be the record count: ''"),
    (b"\xff3\nheader\n", 1, "first line must be the record count: '\ufffd3'"),
    (b"2\nheader\n\nimg/a.jpg 1\n", 3, "empty record line"),
    (b"1\nheader\nimg/a.jpg 1 X\n", 3, "expected an integer, found 'X': 'img/a.jpg 1 X'"),
])
def test_heads_and_bodies_that_cannot_be_read(tmp_path, content, line, problem):
    path = tmp_path / "list_x.txt"
    path.write_bytes(content)
    with pytest.raises(AnnotationError) as err:
        read_records(path)
    assert str(err.value) == f"{path}:{line}: {problem}"


def test_an_empty_body_and_an_empty_header_line(tmp_path):
    path = tmp_path / "list_x.txt"
    for content in (b"0\nheader\n", b"0\nheader\n\n  \n", b"0\r\nheader\r\n\r\n"):
        path.write_bytes(content)
        rec = read_records(path)
        assert rec.path == path and rec.names.shape == (0,) and rec.names.dtype.kind == "U"
        assert rec.counts.tolist() == [] and rec.counts.dtype.kind == "i" and rec.values.dtype == np.int32
        assert rec.table(4).shape == (0, 4)
    path.write_text("2\nheader\nimg/a.jpg\nimg/b.jpg\n")                 # names only: no integer at all
    rec = read_records(path)
    assert rec.counts.tolist() == [0, 0] and rec.values.tolist() == [] and rec.table(0).shape == (2, 0)
    path.write_bytes(b"2\n\nimg/a.jpg 1 -12\nimg/b.jpg\n")          # an empty header line, a name-only record
    rec = read_records(path)
    assert rec.names.tolist() == ["img/a.jpg", "img/b.jpg"] and rec.counts.tolist() == [2, 0]
    assert rec.values.tolist() == [1, -12] and rec.values.dtype == np.int32


def test_integers_of_every_width_and_sign(tmp_path):
    path = tmp_path / "list_x.txt"
    path.write_text("2\nheader\nimg/a.jpg 123456789 -123456789 -7 0\nimg/b.jpg -10 10 -0 9\n")
    assert read_records(path).values.tolist() == [123456789, -123456789, -7, 0, -10, 10, 0, 9]
    path.write_text("1\nheader\nimg/a.jpg 1 2 3 4\n")
    assert read_records(path).values.tolist() == [1, 2, 3, 4]      # the general parser: no label fast path


def test_bytes_that_are_not_utf8_are_shown_not_fatal(tmp_path):
    path = tmp_path / "list_x.txt"
    name = b"img/Caf\xe9/img_00000001.jpg"
    path.write_bytes(b"2\nheader\n" + name + b" 1 -1\n" + name + b" 1 0\n")
    for labels in (False, True):
        assert read_records(path, labels=labels).names.tolist() == ["img/Caf\ufffd/img_00000001.jpg"] * 2
    from vfu_nb.data.annotations import _label_bytes, pad_name
    aligned = pad_name("x").encode().replace(b"x", b"\xe9") + _label_bytes(np.array([[1, -1]], np.int8))[0].tobytes()
    path.write_bytes(b"1\nheader\n" + aligned + b"\n")
    assert read_records(path, labels=True).names.tolist() == ["\ufffd"]
    path.write_bytes(b"1\nheader\n" + name + b" 1 x\xe9\n")
    with pytest.raises(AnnotationError) as err:
        read_records(path)
    assert str(err.value) == f"{path}:3: expected an integer, found 'x\ufffd': 'img/Caf\ufffd/img_00000001.jpg 1 x\ufffd'"
    path.write_bytes(b"1\nheader\n" + name + b" 1\n")
    with pytest.raises(AnnotationError) as err:
        read_records(path).table(2)
    assert str(err.value) == f"{path}:3: expected 3 fields, found 2: 'img/Caf\ufffd/img_00000001.jpg 1'"


def test_an_error_shows_the_first_160_characters_of_its_line(tmp_path):
    path = tmp_path / "list_x.txt"
    line = "img/" + "a" * 200 + ".jpg 1 2"
    path.write_text(f"1\nheader\n{line}  \n")
    with pytest.raises(AnnotationError) as err:
        read_records(path).table(1)
    assert str(err.value) == f"{path}:3: expected 2 fields, found 3: {line[:160]!r}"
    path.write_text(f"1\nheader\n{line}  \r\n")
    with pytest.raises(AnnotationError) as err:
        read_records(path).table(1)
    assert str(err.value).endswith(f": {line[:160]!r}")


def test_a_line_shown_in_an_error_keeps_its_spaces(tmp_path):
    path = tmp_path / "list_x.txt"
    path.write_text("2\nheader\nimg/a.jpg 1\n  img/b.jpg 1 2  \n")
    with pytest.raises(AnnotationError) as err:
        read_records(path).table(1)
    assert str(err.value) == f"{path}:4: expected 2 fields, found 3: '  img/b.jpg 1 2  '"
    path.write_text("2\nheader\nimg/a.jpg 1\nimg/IMG_X\n")
    with pytest.raises(AnnotationError) as err:
        read_records(path).table(1)
    assert str(err.value) == f"{path}:4: expected 2 fields, found 1: 'img/IMG_X'"


def test_an_empty_line_at_a_chunk_boundary(tmp_path, monkeypatch):
    from vfu_nb.data import annotations

    monkeypatch.setattr(annotations, "_CHUNK_LINES", 2)
    path = tmp_path / "list_x.txt"
    path.write_text("4\nheader\nimg/a.jpg 1\n\nimg/c.jpg 3\nimg/d.jpg 4\n")
    with pytest.raises(AnnotationError, match=r"list_x\.txt:4: empty record line$"):
        read_records(path)


def test_fields_have_their_documented_types(tmp_path):
    a = load_annotations(write_tree(tmp_path, images=False))
    types = {"category": np.int64, "category_types": np.int64, "attribute_types": np.int64, "clothes_type": np.int64,
             "attributes": np.int8, "bbox": np.float32, "landmarks": np.float32, "landmark_visibility": np.int64}
    for field, dtype in types.items():
        assert getattr(a, field).dtype == dtype, field
    assert a.root == tmp_path and a.files == {k: str(p) for k, p in annotation_paths(tmp_path).items()}
    names, ctypes = read_vocabulary(tmp_path / "Anno/list_category_cloth.txt")
    assert ctypes.dtype == np.int64 and names == ["Tee", "Shorts", "Dress", "Cape"]


def test_direct_readers_check_the_count_unless_told(tmp_path):
    write_tree(tmp_path, {"Anno/list_attr_cloth.txt": ["6"] + FILES["Anno/list_attr_cloth.txt"][1:],
                          "Eval/list_eval_partition.txt": ["2"] + FILES["Eval/list_eval_partition.txt"][1:]},
               images=False)
    with pytest.raises(AnnotationError, match="count line says 6 records but the file holds 5"):
        read_vocabulary(tmp_path / "Anno/list_attr_cloth.txt")
    with pytest.raises(AnnotationError, match="count line says 2 records but the file holds 3"):
        read_partition(tmp_path / "Eval/list_eval_partition.txt")
    assert len(read_vocabulary(tmp_path / "Anno/list_attr_cloth.txt", strict_count=False)[0]) == 5
    assert read_partition(tmp_path / "Eval/list_eval_partition.txt", strict_count=False)[1].tolist() == \
        ["train", "val", "test"]


@pytest.mark.parametrize("box", ["000 000 050 050", "010 010 010 020", "010 020 030 020", "010 080 050 100",
                                 "010 010 090 050"])
def test_boxes_at_the_limits_of_the_rule_are_accepted(tmp_path, box):
    a = load_annotations(write_tree(tmp_path, with_line("Anno/list_bbox.txt", 4, pad(NAMES[1]) + box), images=False))
    x1, y1, x2, y2 = (int(v) for v in box.split())
    assert a.bbox[1].tolist() == [x1 - 1, y1 - 1, x2, y2]


def test_a_clothes_type_missing_from_the_set_and_repeated_types(tmp_path):
    lines = {rel: [str(len(rows) - 3)] + rows[1:3] + rows[4:] if rel != "Anno/list_category_cloth.txt"
                  and rel != "Anno/list_attr_cloth.txt" else rows for rel, rows in FILES.items()}
    a = load_annotations(write_tree(tmp_path / "no_lower", lines, images=False))        # types 1 and 3 only
    assert list(a.clothes_type) == [1, 3] and a.landmarks[1, :, 0].tolist() == [40, 60, 25, 75, 40, 60, 30, 70]
    second_tee = "img/Striped_Knit_Tee/img_00000002.jpg"
    extra = {"Anno/list_category_img.txt": pad(second_tee) + "1", "Anno/list_attr_img.txt": pad(second_tee) + " 1 -1 -1 -1 -1",
             "Anno/list_bbox.txt": pad(second_tee) + "011 021 090 100", "Eval/list_eval_partition.txt": pad(second_tee) + "train",
             "Anno/list_landmarks.txt": pad(second_tee) + "1  0 040 030  0 060 030  1 015 050  0 085 050  0 030 095  3 070 099 "}
    lines = {rel: ["4"] + FILES[rel][1:] + [extra[rel]] for rel in extra}
    write_tree(tmp_path / "two_tees", lines, images=False)
    with pytest.raises(AnnotationError, match=r"list_landmarks\.txt:6: landmark visibility must be 0, 1 or 2"):
        load_annotations(tmp_path / "two_tees")


def test_anno_wins_over_anno_coarse_and_image_folders(tmp_path):
    write_tree(tmp_path)
    (tmp_path / "Anno_coarse").mkdir()
    assert annotation_paths(tmp_path)["bbox"] == tmp_path / "Anno/list_bbox.txt"
    assert annotation_paths(tmp_path / "nothing")["bbox"] == tmp_path / "nothing/Anno/list_bbox.txt"
    from vfu_nb.data.annotations import image_root
    assert image_root(tmp_path) == tmp_path                                  # img/ at the root
    (tmp_path / "Img").mkdir()
    (tmp_path / "img").rename(tmp_path / "Img" / "img")
    assert image_root(str(tmp_path)) == tmp_path / "Img"                     # the official archive layout
    (tmp_path / "img").mkdir()
    assert image_root(tmp_path) == tmp_path                                  # both: img/ at the root wins
    (tmp_path / "img").rmdir()
    a = load_annotations(tmp_path)
    assert a.image_path(1) == tmp_path / "Img" / NAMES[1] and a.image_path(1).is_file()
    assert a.indices("val").tolist() == [1] and a.indices("train").tolist() == [0]
    with pytest.raises(ValueError, match=r"^split must be one of \('train', 'val', 'test'\), got 'dev'$"):
        a.indices("dev")


def test_pad_name_at_exactly_the_column():
    from vfu_nb.data.annotations import pad_name
    name = "x" * 71
    assert pad_name(name) == name + " " and pad_name(name[:70]) == name[:70] + " "


def test_written_files_have_the_real_headers_and_columns(tmp_path):
    from vfu_nb.data.annotations import HEADERS, write_annotations
    a = load_annotations(write_tree(tmp_path / "a", images=False))
    write_annotations(tmp_path / "b", a)
    for key, rel in annotation_paths(tmp_path / "b").items():
        lines = rel.read_text().splitlines()
        assert lines[:2] == [str(len(lines) - 2), HEADERS[key]], key
    assert (tmp_path / "b/Anno/list_attr_cloth.txt").read_text().splitlines()[2] == "striped" + " " * 22 + "1"


def test_label_fast_path_parses_any_printable_name_and_refuses_odd_lines():
    from vfu_nb.data.annotations import _parse_label_chunk

    def chunk(text):
        return np.frombuffer(text.encode(), dtype=np.uint8)

    names, counts, values = _parse_label_chunk(chunk("img/a!b.jpg  1 -1\nimg/c.jpg -1 -0"))
    assert names.tolist() == ["img/a!b.jpg", "img/c.jpg"] and counts.tolist() == [2, 2]
    assert values.tolist() == [1, -1, -1, 0] and values.dtype == np.int8      # 1 byte per label of the big matrix
    assert _parse_label_chunk(chunk("img/a.jpg  1 -1\n img/c.jpg -1  0")) is None      # a line opens with a blank
    assert _parse_label_chunk(chunk("img/a.jpg  1 -1\nimg/c-1")) is None               # a name without labels
    assert _parse_label_chunk(chunk("img/a.jpg  1 -1\nimg/c.jpg\t-1  0")) is None     # a tab ends the name


def test_a_last_label_row_without_labels_reads_as_the_general_tokeniser_does(tmp_path):
    path = tmp_path / "list_attr_img.txt"
    path.write_text("2\nheader\nimg/a.jpg  1 -1\nimg/b-1\n")                 # not name "img/b", label -1
    for labels in (True, False):
        rec = read_records(path, labels=labels)
        assert rec.names.tolist() == ["img/a.jpg", "img/b-1"] and rec.counts.tolist() == [2, 0]
        assert rec.values.tolist() == [1, -1]


def test_the_first_repeated_name_is_found_however_many_repeat():
    from vfu_nb.data.annotations import _duplicates
    assert _duplicates(np.array(["a", "b", "c"])) is None
    assert _duplicates(np.array(["a", "b", "a", "b"])) == 2                  # every name twice
    assert _duplicates(np.array(["a", "a", "a"])) == 1
    assert _duplicates(np.array(["b", "a", "c", "a", "b"])) == 3


def test_the_attribute_matrix_is_read_through_the_label_fast_path(tmp_path, monkeypatch):
    from vfu_nb.data import annotations
    parsed = []
    fast = annotations._parse_aligned_labels
    monkeypatch.setattr(annotations, "_parse_aligned_labels", lambda buf: parsed.append(buf.size) or fast(buf))
    load_annotations(write_tree(tmp_path, images=False))
    assert len(parsed) == 1            # list_attr_img.txt only; the other files go to the general tokeniser


def test_aligned_label_fast_path_reads_one_label_and_names_up_to_the_column():
    from vfu_nb.data.annotations import _parse_aligned_labels

    def chunk(*lines):
        return np.frombuffer("\n".join(lines).encode(), dtype=np.uint8)

    names, counts, values = _parse_aligned_labels(chunk(pad("img/a.jpg") + " 1", pad("img/b.jpg") + "-1"))
    assert names.tolist() == ["img/a.jpg", "img/b.jpg"] and counts.tolist() == [1, 1]
    assert values.tolist() == [1, -1] and values.dtype == np.int8
    names, _, values = _parse_aligned_labels(chunk(pad("x" * 70) + " 1 -1  0"))    # the name fills column 70
    assert names.tolist() == ["x" * 70] and values.tolist() == [1, -1, 0]
    assert _parse_aligned_labels(chunk(pad("img/a.jpg") + " 1 -1 -")) is None         # a dangling sign


def test_a_dangling_sign_after_aligned_labels_is_an_error(tmp_path):
    path = tmp_path / "list_attr_img.txt"
    path.write_text("1\nheader\n" + pad("img/a.jpg") + " 1 -1 -\n")
    fast, general = _read_both(path)
    assert fast == general == f"{path}:3: expected an integer, found '-': {pad('img/a.jpg') + ' 1 -1 -'!r}"


def test_vocabulary_names_are_kept_as_written_but_for_trailing_blanks(tmp_path):
    path = tmp_path / "list_attr_cloth.txt"
    path.write_text("2\nheader\n  a-line  1\nfloral print    1   \n")
    assert read_vocabulary(path)[0] == ["  a-line", "floral print"]


@pytest.mark.parametrize("blank", ["\t", "\r", "\x0b"])
def test_a_blank_inside_an_aligned_name_splits_it_on_every_path(tmp_path, blank):
    path = tmp_path / "list_attr_img.txt"
    path.write_text("1\nheader\n" + pad(f"img/a{blank}b.jpg") + " 1 -1\n", newline="")
    fast, general = _read_both(path)
    assert fast == general and general.startswith(f"{path}:3: expected an integer, found 'b.jpg'")
