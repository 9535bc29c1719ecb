"""Parser rules and errors of the DeepFashion-C annotation reader."""

from pathlib import Path

import numpy as np
import pytest

from dftree import FILES, NAMES, pad, with_line, write_tree
from vfu_nb.data import (
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


@pytest.mark.parametrize("rel, line_no, text, expect", [
    ("Anno/list_category_img.txt", 1, "4", "count line says 4 records but the file holds 3"),
    ("Anno/list_category_img.txt", 1, "three", "first line must be the record count"),
    ("Anno/list_category_img.txt", 4, pad(NAMES[1]) + "2 7", "expected 2 fields, found 3"),
    ("Anno/list_category_img.txt", 5, pad(NAMES[2]) + "9", "category label 9 out of range 1..4"),
    ("Anno/list_category_img.txt", 3, pad(NAMES[0]) + "x1", "expected an integer, found 'x1'"),
    ("Anno/list_attr_img.txt", 4, pad(NAMES[1]) + "-1  1 -1  0", "expected 6 fields, found 5"),
    ("Anno/list_attr_img.txt", 5, pad(NAMES[2]) + "-1 -1  2  1  1", "attribute labels must be 1, -1 or 0"),
    ("Anno/list_bbox.txt", 3, pad(NAMES[0]) + "090 021 011 100", "bounding box must satisfy"),
    ("Anno/list_landmarks.txt", 4, pad(NAMES[1]) + "2  0 010 010  0 050 010  0 012 070",
     "clothes_type 2 needs 4 (visibility x y) triples"),
    ("Anno/list_landmarks.txt", 4, pad(NAMES[1]) + "2  0 010 010  0 050 010  0 012 070  3 048 075",
     "landmark visibility must be 0, 1 or 2"),
    ("Anno/list_landmarks.txt", 4, pad(NAMES[1]) + "4  0 010 010", "clothes_type 4 out of range 1..3"),
    ("Anno/list_landmarks.txt", 3,
     pad(NAMES[0]) + "2  0 010 010  0 050 010  0 012 070  1 048 075", "differs from its category's type 1"),
    ("Eval/list_eval_partition.txt", 4, pad(NAMES[1]) + "valid", "evaluation status must be one of"),
    ("Anno/list_attr_cloth.txt", 6, "v-neck                       9", "attribute_type must be 1..5"),
    ("Anno/list_category_cloth.txt", 4, "Shorts", "expected '<name> <type>'"),
])
def test_bad_input_names_file_line_and_text(tmp_path, rel, line_no, text, expect):
    write_tree(tmp_path, with_line(rel, line_no, text), images=False)
    with pytest.raises(AnnotationError) as err:
        load_annotations(tmp_path)
    message = str(err.value)
    assert f"{Path(rel).name}:{line_no}:" in message
    assert expect in message
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
    from vfu_nb.annotations import write_annotations
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
    from vfu_nb.annotations import write_annotations
    a = load_annotations(write_tree(tmp_path / "a", images=False))
    a.category_names, a.category_types = read_vocabulary(META / "list_category_cloth.txt")
    write_annotations(tmp_path / "b", a)
    assert (tmp_path / "b/Anno/list_category_cloth.txt").read_bytes() == (META / "list_category_cloth.txt").read_bytes()


def test_pad_name_puts_the_next_field_at_column_71():
    from vfu_nb.annotations import pad_name
    assert pad_name("img/a/img_00000001.jpg") == "img/a/img_00000001.jpg".ljust(71)
    long = "img/" + "x" * 70 + "/img_00000001.jpg"
    assert pad_name(long) == long + " "
