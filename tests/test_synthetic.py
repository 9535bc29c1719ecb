"""Synthetic DeepFashion-C generator: byte-level format, determinism, splits, vocabularies, scenes."""

import collections
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vfu_nb import synthetic as S

N = 100
SHARED = Path(__file__).resolve().parents[2] / "shared"
PER_IMAGE_FILES = {
    "Anno/list_category_img.txt": "image_name  category_label",
    "Anno/list_attr_img.txt": "image_name  attribute_labels",
    "Anno/list_bbox.txt": "image_name  x_1  y_1  x_2  y_2",
    "Anno/list_landmarks.txt": None,  # header is free-form (skipped by readers); checked separately
    "Eval/list_eval_partition.txt": "image_name  evaluation_status",
}
NAME_RE = re.compile(r"^img/[A-Za-z0-9_-]+/img_\d{8}\.jpg$")
TRIPLES = {1: 6, 2: 4, 3: 8}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A 100-image tree generated with 2 worker processes."""
    out = tmp_path_factory.mktemp("synth") / "seed0"
    summary = S.generate(out, N, seed=0, workers=2, progress=False)
    return out, summary


def read_listing(path: Path) -> tuple[str, list[str]]:
    """(header, rows) of a count/header/rows file, checking the count line and the line endings."""
    data = path.read_bytes()
    assert data.endswith(b"\n") and b"\r" not in data and b"\t" not in data
    lines = data.decode("ascii").split("\n")[:-1]
    assert int(lines[0]) == len(lines) - 2, path
    return lines[1], lines[2:]


def rows_by_name(tree_dir: Path, rel: str) -> dict[str, str]:
    return {row.split()[0]: row for row in read_listing(tree_dir / rel)[1]}


@pytest.fixture(scope="module")
def images(tree):
    """name -> (width, height, format) of every listed image."""
    out, _ = tree
    info = {}
    for name in rows_by_name(out, "Anno/list_category_img.txt"):
        with Image.open(out / name) as im:
            info[name] = (im.width, im.height, im.format)
    return info


def test_tree_is_complete(tree):
    out, summary = tree
    assert (out / S.MARKER_DONE).exists() and not (out / S.MARKER_BUSY).exists()
    assert summary["n"] == N and summary["cached"] is False
    assert sum(summary["splits"].values()) == N and sum(summary["categories"].values()) == N
    for rel in list(PER_IMAGE_FILES) + ["Anno/list_category_cloth.txt", "Anno/list_attr_cloth.txt"]:
        assert (out / rel).is_file(), rel
    assert not list(out.rglob("*.tmp"))


@pytest.mark.parametrize("rel", list(PER_IMAGE_FILES))
def test_per_image_files_share_names_headers_and_column_71(tree, rel):
    out, _ = tree
    header, rows = read_listing(out / rel)
    if PER_IMAGE_FILES[rel] is not None:
        assert header == PER_IMAGE_FILES[rel]
    else:
        assert header.startswith("image_name  clothes_type  ")
    names = [row.split()[0] for row in rows]
    assert names == [row.split()[0] for row in read_listing(out / "Anno/list_category_img.txt")[1]]
    assert len(rows) == N and len(set(names)) == N
    for name, row in zip(names, rows):
        assert NAME_RE.match(name), name
        assert len(name) < S.NAME_COLUMN and row[:S.NAME_COLUMN] == name.ljust(S.NAME_COLUMN)
        if rel in ("Anno/list_attr_img.txt", "Anno/list_landmarks.txt"):
            assert row[S.NAME_COLUMN:S.NAME_COLUMN + 2] in (" 1", " 2", " 3", "-1"), row[:80]
        else:
            assert row[S.NAME_COLUMN] != " ", row[:80]


def test_folder_numbering_restarts_per_folder(tree):
    out, _ = tree
    numbers = collections.defaultdict(list)
    for name in rows_by_name(out, "Anno/list_category_img.txt"):
        folder, file = name.split("/")[1:]
        numbers[folder].append(int(file[4:12]))
    for folder, got in numbers.items():
        assert got == list(range(1, len(got) + 1)), folder
        assert len(got) <= 50
    assert len(numbers) >= 2
    assert all(folder.endswith(tuple(S.RENDERED_CATEGORIES)) for folder in numbers)


def test_images_are_jpegs_up_to_300px(images):
    assert len(images) == N
    assert all(fmt == "JPEG" and max(w, h) <= S.MAX_SIDE for w, h, fmt in images.values())
    assert sum(max(w, h) == S.MAX_SIDE for w, h, _ in images.values()) >= 0.75 * N
    assert len({(w, h) for w, h, _ in images.values()}) > 5  # varied aspect ratios


def test_category_labels_are_1_based_rendered_categories(tree):
    out, _ = tree
    for name, row in rows_by_name(out, "Anno/list_category_img.txt").items():
        label = int(row[S.NAME_COLUMN:])
        assert 1 <= label <= 50
        assert S.DEEPFASHION_CATEGORIES[label - 1][0] in S.RENDERED_CATEGORIES
        assert name.split("/")[1].endswith(S.DEEPFASHION_CATEGORIES[label - 1][0])


def test_bboxes_are_1_based_inclusive_inside_the_image(tree, images):
    out, _ = tree
    for name, row in rows_by_name(out, "Anno/list_bbox.txt").items():
        m = re.fullmatch(r"(\d{3}) (\d{3}) (\d{3}) (\d{3})", row[S.NAME_COLUMN:])
        assert m, row
        x1, y1, x2, y2 = map(int, m.groups())
        w, h, _ = images[name]
        assert 1 <= x1 < x2 <= w and 1 <= y1 < y2 <= h, (name, row)


def test_landmark_rows(tree, images):
    out, _ = tree
    labels = rows_by_name(out, "Anno/list_category_img.txt")
    boxes = rows_by_name(out, "Anno/list_bbox.txt")
    for name, row in rows_by_name(out, "Anno/list_landmarks.txt").items():
        tail = row[S.NAME_COLUMN:]
        assert re.fullmatch(r" [123](  [012] \d{3} \d{3})+ ", tail), row
        clothes_type = int(tail[:2])
        category = S.DEEPFASHION_CATEGORIES[int(labels[name][S.NAME_COLUMN:]) - 1]
        assert clothes_type == category[1]
        tokens = [int(t) for t in tail.split()[1:]]
        assert len(tokens) == 3 * TRIPLES[clothes_type]
        w, h, _ = images[name]
        x1, y1, x2, y2 = map(int, boxes[name].split()[1:])
        for vis, x, y in zip(tokens[0::3], tokens[1::3], tokens[2::3]):
            assert vis in (0, 1, 2)
            assert 1 <= x <= w and 1 <= y <= h  # truncated points are clamped into the image
            if vis == 0:
                assert x1 <= x <= x2 and y1 <= y <= y2


def test_occluded_and_truncated_landmarks_occur(tree):
    out, _ = tree
    counts = collections.Counter()
    for row in rows_by_name(out, "Anno/list_landmarks.txt").values():
        counts.update(int(t) for t in row.split()[2::3])
    assert counts[0] > counts[1] > 0 and counts[2] > 0, counts


def test_attribute_rows(tree):
    out, _ = tree
    for row in rows_by_name(out, "Anno/list_attr_img.txt").values():
        tail = row[S.NAME_COLUMN:]
        assert re.fullmatch(r"(-1| 1)( (-1| 1))*", tail), row[:90]
        values = [int(t) for t in tail.split()]
        assert len(values) == len(S.SYNTHETIC_ATTRIBUTES)
        assert 2 <= values.count(1) <= 5


def test_partition_matches_plan(tree):
    out, _ = tree
    plans = S.plan_images(N, 0)
    rows = rows_by_name(out, "Eval/list_eval_partition.txt")
    assert [row.split()[1] for row in rows.values()] == [p.split for p in plans]
    assert list(rows) == [p.name for p in plans]


def test_split_proportions_and_long_tail():
    plans = S.plan_images(3000, seed=3)
    counts = collections.Counter(p.split for p in plans)
    assert counts == {"train": 2100, "val": 450, "test": 450}
    prefix = collections.Counter(S.plan_split(333, seed=3))
    assert abs(prefix["train"] / 333 - .7) < .03 and abs(prefix["val"] / 333 - .15) < .03
    per_category = collections.Counter(p.category for p in plans)
    assert set(per_category) == set(S.RENDERED_CATEGORIES)
    assert max(per_category.values()) > 8 * min(per_category.values())
    types = {S.DEEPFASHION_CATEGORIES[p.label - 1][1] for p in plans}
    assert types == {1, 2, 3}


def test_category_vocabulary(tree):
    out, _ = tree
    text = (out / "Anno/list_category_cloth.txt").read_text()
    lines = text.split("\n")[:-1]
    assert lines[:2] == ["50", "category_name  category_type"]
    assert all(len(line) == 16 for line in lines[2:])
    assert len(text.encode()) == 882
    real = SHARED / "deepfashion_meta" / "list_category_cloth.txt"
    if not real.exists():
        pytest.skip("../shared/deepfashion_meta is absent")
    assert real.read_bytes() == text.encode("ascii")


def test_attribute_vocabulary_parses_like_the_real_file(tree):
    out, _ = tree
    header, rows = read_listing(out / "Anno/list_attr_cloth.txt")
    assert header == "attribute_name  attribute_type"
    parsed = [tuple(row.rstrip().rsplit(None, 1)) for row in rows]
    assert [(n, int(t)) for n, t in parsed] == S.SYNTHETIC_ATTRIBUTES
    assert all(row[:29].rstrip() == n and row[29] == t for row, (n, t) in zip(rows, parsed))
    assert any(" " in n for n, _ in parsed)
    assert {t for _, t in S.SYNTHETIC_ATTRIBUTES} == {1, 2, 3, 4, 5}
    assert 30 <= len(S.SYNTHETIC_ATTRIBUTES) <= 50
    assert [n for n, _ in S.SYNTHETIC_ATTRIBUTES] == sorted(n for n, _ in S.SYNTHETIC_ATTRIBUTES)


def test_same_seed_is_byte_identical_for_any_worker_count(tree, tmp_path):
    out, _ = tree
    again = tmp_path / "again"
    S.generate(again, N, seed=0, workers=1, progress=False)
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:
        assert (out / rel).read_bytes() == (again / rel).read_bytes(), rel


def test_prefix_stability_and_other_seed(tree, tmp_path):
    out, _ = tree
    small = S.generate(tmp_path / "small", 12, seed=0, workers=1, progress=False)
    assert small["n"] == 12
    for plan in S.plan_images(12, 0):
        assert (tmp_path / "small" / plan.name).read_bytes() == (out / plan.name).read_bytes()
    S.generate(tmp_path / "other", 12, seed=1, workers=1, progress=False)
    mine = {p.read_bytes() for p in (out / "img").rglob("*.jpg")}
    assert not mine & {p.read_bytes() for p in (tmp_path / "other" / "img").rglob("*.jpg")}
    assert (tmp_path / "other/Anno/list_bbox.txt").read_bytes() != \
        (tmp_path / "small/Anno/list_bbox.txt").read_bytes()


def test_rerun_is_cached_and_interrupted_runs_are_redone(tree, tmp_path):
    out, _ = tree
    assert S.generate(out, N, seed=0, progress=False)["cached"] is True
    partial = tmp_path / "partial"
    (partial / "img").mkdir(parents=True)
    (partial / S.MARKER_BUSY).write_text("")
    (partial / "img" / "stale.jpg").write_bytes(b"x")
    summary = S.generate(partial, 5, seed=0, workers=1, progress=False)
    assert summary["cached"] is False and not (partial / "img" / "stale.jpg").exists()
    assert not (partial / S.MARKER_BUSY).exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not a synthetic tree")
    with pytest.raises(FileExistsError):
        S.generate(foreign, 5, seed=0, workers=1, progress=False)


def test_cli(tmp_path, capsys):
    summary = S.main(["--out", str(tmp_path / "cli"), "--n", "3", "--seed", "4", "--workers", "1",
                      "--quiet"])
    assert summary["n"] == 3 and '"seed": 4' in capsys.readouterr().out
    assert (tmp_path / "cli" / S.MARKER_DONE).exists()


def test_specs_only_label_what_can_be_drawn():
    rng = np.random.default_rng(0)
    for category in S.RENDERED_CATEGORIES:
        style, ctype = S._STYLES[category], S._CATEGORY_TYPE[category]
        for _ in range(60):
            spec = S.sample_spec(category, rng)
            labels = set(S.spec_labels(spec))
            assert 2 <= len(labels) <= 5
            assert sum(n in labels for n in S._ATTRIBUTE_GROUPS[1]) == 1  # exactly one texture
            sleeves = {"sleeveless", "short sleeve", "long sleeve"} & labels
            assert len(sleeves) == (1 if ctype != 2 else 0)
            if "cuffed" in labels:
                assert style.bottom == "legs" or sleeves - {"sleeveless"}
            assert ("hooded" in labels) == (spec["neck"] == "hood")
            assert S.attribute_vector(spec).count(1) == len(labels)


def test_round_trip_through_the_reader(tree):
    """The reader parses the synthetic tree, and its labels agree with what the generator planned."""
    from vfu_nb.data import DeepFashionC, load_annotations
    out, summary = tree
    ann = load_annotations(out)
    plans = S.plan_images(len(ann), 0)
    assert list(ann.image_names) == [p.name for p in plans]
    assert [ann.category_names[c] for c in ann.category] == [p.category for p in plans]
    assert {s: int((ann.split == s).sum()) for s in ("train", "val", "test")} == summary["splits"]
    assert (ann.clothes_type == ann.category_types[ann.category]).all()
    assert set(np.unique(ann.attributes)) == {-1, 1}
    ds = DeepFashionC(out, "train", image_size=32)
    for k in range(min(10, len(ds))):
        item = ds[k]
        visible = item["landmark_visibility"] == 0
        assert ((item["landmarks"][visible] >= 0) & (item["landmarks"][visible] <= 1)).all()
        assert item["attributes"].sum() >= 2
