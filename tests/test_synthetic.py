"""Synthetic DeepFashion-C generator: byte-level format, determinism, splits, vocabularies, scenes, the
geometry dial, annotation noise, the displaced-evidence control, bad options and cached/version-aware
regeneration."""

import collections
import hashlib
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vfu_nb.data import annotations
from vfu_nb.data.synthetic import displaced, driver, evidence, garment, planning, scene, settings, specs

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
    """A 100-image tree generated with 2 worker processes (default settings)."""
    out = tmp_path_factory.mktemp("synth") / "seed0"
    summary = driver.generate(out, N, seed=0, workers=2, progress=False)
    return out, summary


@pytest.fixture(scope="module")
def clean_tree(tmp_path_factory):
    """The first MIN_IMAGES images of `tree` without annotation noise, written through the CLI."""
    out = tmp_path_factory.mktemp("synth") / "clean"
    summary = driver.main(["--out", str(out), "--n", str(specs.MIN_IMAGES), "--seed", "0", "--workers", "1",
                           "--quiet", "--landmark-noise", "0", "--visibility-flip", "0"])
    return out, summary


@pytest.fixture(scope="module")
def displaced_tree(tmp_path_factory):
    """`tree` with its local parts displaced (the negative control), written through the CLI."""
    out = tmp_path_factory.mktemp("synth") / "displaced"
    summary = driver.main(["--out", str(out), "--n", str(N), "--seed", "0", "--workers", "1", "--quiet",
                           "--evidence-placement", "displaced"])
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
    assert (out / settings.MARKER_DONE).exists() and not (out / settings.MARKER_BUSY).exists()
    assert summary["n"] == N and summary["cached"] is False and summary["version"] == settings.VERSION == 2
    assert summary["settings"] == settings.default_settings()
    assert json.loads((out / settings.MARKER_DONE).read_text())["settings"] == settings.default_settings()
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
        column = annotations.NAME_COLUMN
        assert len(name) < column and row[:column] == name.ljust(column)
        if rel in ("Anno/list_attr_img.txt", "Anno/list_landmarks.txt"):
            assert row[annotations.NAME_COLUMN:annotations.NAME_COLUMN + 2] in (" 1", " 2", " 3", "-1"), row[:80]
        else:
            assert row[annotations.NAME_COLUMN] != " ", row[:80]


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
    assert all(folder.endswith(tuple(specs.RENDERED_CATEGORIES)) for folder in numbers)


def test_images_are_jpegs_up_to_300px(images):
    assert len(images) == N
    assert all(fmt == "JPEG" and max(w, h) <= settings.MAX_SIDE for w, h, fmt in images.values())
    assert sum(max(w, h) == settings.MAX_SIDE for w, h, _ in images.values()) >= 0.75 * N
    assert len({(w, h) for w, h, _ in images.values()}) > 5  # varied aspect ratios


def test_category_labels_are_1_based_rendered_categories(tree):
    out, _ = tree
    for name, row in rows_by_name(out, "Anno/list_category_img.txt").items():
        label = int(row[annotations.NAME_COLUMN:])
        assert 1 <= label <= 50
        assert specs.DEEPFASHION_CATEGORIES[label - 1][0] in specs.RENDERED_CATEGORIES
        assert name.split("/")[1].endswith(specs.DEEPFASHION_CATEGORIES[label - 1][0])


def test_bboxes_are_1_based_inclusive_inside_the_image(tree, images):
    out, _ = tree
    for name, row in rows_by_name(out, "Anno/list_bbox.txt").items():
        m = re.fullmatch(r"(\d{3}) (\d{3}) (\d{3}) (\d{3})", row[annotations.NAME_COLUMN:])
        assert m, row
        x1, y1, x2, y2 = map(int, m.groups())
        w, h, _ = images[name]
        assert 1 <= x1 < x2 <= w and 1 <= y1 < y2 <= h, (name, row)


def test_landmark_rows(tree, images):
    out, _ = tree
    labels = rows_by_name(out, "Anno/list_category_img.txt")
    boxes = rows_by_name(out, "Anno/list_bbox.txt")
    for name, row in rows_by_name(out, "Anno/list_landmarks.txt").items():
        tail = row[annotations.NAME_COLUMN:]
        assert re.fullmatch(r" [123](  [012] \d{3} \d{3})+ ", tail), row
        clothes_type = int(tail[:2])
        category = specs.DEEPFASHION_CATEGORIES[int(labels[name][annotations.NAME_COLUMN:]) - 1]
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
        tail = row[annotations.NAME_COLUMN:]
        assert re.fullmatch(r"(-1| 1)( (-1| 1))*", tail), row[:90]
        values = [int(t) for t in tail.split()]
        assert len(values) == len(specs.SYNTHETIC_ATTRIBUTES)
        assert specs._MIN_POSITIVES <= values.count(1) <= specs._MAX_POSITIVES + 2


def test_partition_matches_plan(tree):
    out, _ = tree
    plans = planning.plan_images(N, 0)
    rows = rows_by_name(out, "Eval/list_eval_partition.txt")
    assert [row.split()[1] for row in rows.values()] == [p.split for p in plans]
    assert list(rows) == [p.name for p in plans]


def test_split_proportions_and_long_tail():
    plans = planning.plan_images(3000, seed=3)
    counts = collections.Counter(p.split for p in plans)
    assert counts == {"train": 2100, "val": 450, "test": 450}
    prefix = collections.Counter(planning.plan_split(333, seed=3))
    assert abs(prefix["train"] / 333 - .7) < .03 and abs(prefix["val"] / 333 - .15) < .03
    per_category = collections.Counter(p.category for p in plans)
    assert set(per_category) == set(specs.RENDERED_CATEGORIES)
    assert max(per_category.values()) > 6 * min(per_category.values())
    types = {specs.DEEPFASHION_CATEGORIES[p.label - 1][1] for p in plans}
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
    assert [(n, int(t)) for n, t in parsed] == specs.SYNTHETIC_ATTRIBUTES
    assert all(row[:29].rstrip() == n and row[29] == t for row, (n, t) in zip(rows, parsed))
    assert any(" " in n for n, _ in parsed)
    assert {t for _, t in specs.SYNTHETIC_ATTRIBUTES} == {1, 2, 3, 4, 5}
    assert 40 <= len(specs.SYNTHETIC_ATTRIBUTES) <= 60
    assert [n for n, _ in specs.SYNTHETIC_ATTRIBUTES] == sorted(n for n, _ in specs.SYNTHETIC_ATTRIBUTES)


@pytest.mark.slow
def test_same_seed_is_byte_identical_for_any_worker_count(tree, tmp_path):
    out, _ = tree
    again = tmp_path / "again"
    driver.generate(again, N, seed=0, workers=1, progress=False)
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:
        assert (out / rel).read_bytes() == (again / rel).read_bytes(), rel


@pytest.mark.slow
def test_prefix_stability_and_noise_touches_only_the_written_landmarks(tree, clean_tree):
    """The CLI's noise-free 81-image tree has the first 81 images of the 100-image tree, byte for byte,
    and the same rows in every file except the landmarks."""
    (out, _), (clean, summary) = tree, clean_tree
    assert summary["n"] == specs.MIN_IMAGES and summary["settings"]["landmark_noise"] == 0
    for plan in planning.plan_images(specs.MIN_IMAGES, 0):
        assert (clean / plan.name).read_bytes() == (out / plan.name).read_bytes()
    for rel in PER_IMAGE_FILES:
        noisy, exact = read_listing(out / rel)[1][:specs.MIN_IMAGES], read_listing(clean / rel)[1]
        assert (noisy == exact) == (rel != "Anno/list_landmarks.txt"), rel


def test_other_seed_draws_other_images():
    plans0, plans1 = planning.plan_images(specs.MIN_IMAGES, 0), planning.plan_images(specs.MIN_IMAGES, 1)
    assert [p.name for p in plans0] != [p.name for p in plans1]
    img0, rec0 = scene.render_image(plans0[0], 0)
    img1, rec1 = scene.render_image(plans0[0], 1)
    assert img0.tobytes() != img1.tobytes() and rec0["bbox"] != rec1["bbox"]


@pytest.mark.slow
def test_rerun_is_cached_and_other_settings_or_versions_are_regenerated(tree, clean_tree, tmp_path):
    (out, _), (clean, _) = tree, clean_tree
    assert driver.generate(out, N, seed=0, progress=False)["cached"] is True
    same = driver.main(["--out", str(clean), "--n", str(specs.MIN_IMAGES), "--quiet", "--landmark-noise", "0",
                        "--visibility-flip", "0"])
    assert same["cached"] is True
    meta = json.loads((out / settings.MARKER_DONE).read_text())
    defaults = settings.default_settings()
    assert driver._cached_summary(out, N, 0, defaults) == meta
    for n, seed, changed in [(N + 1, 0, {}), (N, 1, {}), (N, 0, {"geometry_informativeness": 1.0}),
                             (N, 0, {"landmark_noise": 0.0}), (N, 0, {"visibility_flip": 0.1})]:
        assert driver._cached_summary(out, n, seed, {**defaults, **changed}) is None
    old = tmp_path / "old"
    old.mkdir()
    (old / settings.MARKER_DONE).write_text(json.dumps(dict(meta, version=1)))
    (old / "img").mkdir()
    (old / "img" / "stale.jpg").write_bytes(b"x")
    assert driver._cached_summary(old, N, 0, defaults) is None
    summary = driver.generate(old, specs.MIN_IMAGES, seed=0, workers=1, progress=False, landmark_noise=0.0,
                              visibility_flip=0.0)
    assert summary["cached"] is False and summary["version"] == settings.VERSION
    assert not (old / "img" / "stale.jpg").exists() and not (old / settings.MARKER_BUSY).exists()
    for rel in list(PER_IMAGE_FILES) + ["Anno/list_attr_cloth.txt"]:
        assert (old / rel).read_bytes() == (clean / rel).read_bytes(), rel


def test_interrupted_and_foreign_directories(tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / settings.MARKER_BUSY).write_text("")
    (partial / settings.MARKER_DONE).write_text(json.dumps({"version": settings.VERSION, "n": specs.MIN_IMAGES,
                                                            "seed": 0, "settings": settings.default_settings()}))
    assert driver._cached_summary(partial, specs.MIN_IMAGES, 0, settings.default_settings()) is None  # busy marker wins
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not a synthetic tree")
    with pytest.raises(FileExistsError):
        driver.generate(foreign, specs.MIN_IMAGES, seed=0, workers=1, progress=False)


@pytest.mark.parametrize("kwargs, option, allowed", [
    (dict(n=specs.MIN_IMAGES - 1), "n", f">= {specs.MIN_IMAGES}"),
    (dict(n=100.0), "n", "integer"),
    (dict(seed=-1), "seed", ">= 0"),
    (dict(workers=0), "workers", ">= 1"),
    (dict(geometry_informativeness=1.5), "geometry_informativeness", "[0, 1]"),
    (dict(geometry_informativeness=-0.1), "geometry_informativeness", "[0, 1]"),
    (dict(geometry_informativeness=float("nan")), "geometry_informativeness", "[0, 1]"),
    (dict(landmark_noise=-0.01), "landmark_noise", "[0, 0.2]"),
    (dict(visibility_flip=0.6), "visibility_flip", "[0, 0.5]"),
    (dict(evidence_placement="moved"), "evidence_placement", "functional, displaced"),
    (dict(evidence_placement=None), "evidence_placement", "functional, displaced"),
])
def test_bad_options_are_refused_with_their_range(tmp_path, kwargs, option, allowed):
    args = {**dict(n=specs.MIN_IMAGES, seed=0, workers=1, progress=False), **kwargs}
    with pytest.raises(ValueError) as err:
        driver.generate(tmp_path / "never", **args)
    assert str(err.value).startswith(option + ":") and allowed in str(err.value)
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("argv, message", [
    (["--geometry-informativeness", "1.5"], "argument --geometry-informativeness: must be a number in [0, 1]"),
    (["--landmark-noise", "-0.1"], "argument --landmark-noise: must be a number in [0, 0.2]"),
    (["--visibility-flip", "2"], "argument --visibility-flip: must be a number in [0, 0.5]"),
    (["--n", "10"], f"argument --n: must be an integer >= {specs.MIN_IMAGES}"),
    (["--geometry-informativeness", "high"], "argument --geometry-informativeness: invalid float value"),
    (["--jitter", "0.1"], "unrecognized arguments: --jitter"),
    (["--evidence-placement", "moved"], "argument --evidence-placement: invalid choice: 'moved'"),
])
def test_cli_refuses_bad_options(tmp_path, capsys, argv, message):
    base = {"--out": str(tmp_path / "never"), "--n": "100"}
    for flag, value in zip(argv[::2], argv[1::2]):
        base[flag] = value
    with pytest.raises(SystemExit) as exit_info:
        driver.main([t for kv in base.items() for t in kv] + ["--quiet"])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


# --------------------------------------------------------------------------------------------------
# The benchmark's design: categories, the geometry dial, annotation noise, attributes
# --------------------------------------------------------------------------------------------------

def test_at_least_24_categories_of_every_clothes_type_are_rendered():
    plans = planning.plan_images(4000, seed=0)
    present = collections.Counter(p.category for p in plans)
    assert len(present) == len(specs.RENDERED_CATEGORIES) >= 24
    per_type = collections.Counter(specs._CATEGORY_TYPE[c] for c in present)
    assert min(per_type.values()) >= 6 and set(per_type) == {1, 2, 3}
    assert min(present.values()) >= 30 and specs.MIN_IMAGES == 3 * len(specs.RENDERED_CATEGORIES)


def _silhouette(spec: dict) -> tuple:
    return (spec["lower"],) + tuple(spec[s] for s in specs.SHAPE_SLOTS)


def _total_variation(a: collections.Counter, b: collections.Counter) -> float:
    na, nb = sum(a.values()), sum(b.values())
    return .5 * sum(abs(a[k] / na - b[k] / nb) for k in set(a) | set(b))


@pytest.mark.slow
@pytest.mark.parametrize("first, second", [("Tee", "Sweater"), ("Jeans", "Skirt"), ("Dress", "Coat")])
def test_geometry_dial_sets_how_much_the_silhouette_depends_on_the_category(first, second):
    """G = 0: two categories of one clothes type draw the very same silhouette from the same random
    stream (so their silhouette distributions are equal); G = 1: each has its own distribution."""
    def silhouettes(category, g, n=600):
        return [_silhouette(specs.sample_spec(category, np.random.default_rng(k), None, g)) for k in range(n)]

    assert silhouettes(first, 0.0) == silhouettes(second, 0.0)
    at_one = _total_variation(*(collections.Counter(silhouettes(c, 1.0)) for c in (first, second)))
    assert at_one > 0.6
    same = np.mean([a == b for a, b in zip(silhouettes(first, 0.5), silhouettes(second, 0.5))])
    assert 0.5 <= same < 0.65


def test_shape_source_is_the_category_with_probability_g():
    rng = np.random.default_rng(3)
    own = [specs.shape_source("Henley", rng, 0.35) == "Henley" for _ in range(4000)]
    pooled = specs._TYPE_WEIGHTS[1]["Henley"] / sum(specs._TYPE_WEIGHTS[1].values())
    assert abs(np.mean(own) - (0.35 + 0.65 * pooled)) < 0.025
    assert {specs.shape_source("Henley", rng, 0.0) for _ in range(300)} <= set(specs._TYPE_WEIGHTS[1])
    assert {specs.shape_source("Henley", rng, 1.0) for _ in range(50)} == {"Henley"}


def test_keypoints_and_outline_depend_only_on_the_silhouette_slots():
    """Swapping every local part (neckline, front, cuffs, waist, hem, pockets, fabric...) keeps the
    silhouette polygons and keypoints identical."""
    rng = np.random.default_rng(11)
    for category in specs.RENDERED_CATEGORIES:
        for _ in range(5):
            spec = specs.sample_spec(category, rng, None, 1.0)
            other_parts = specs.sample_spec(category, rng, None, 1.0)
            swapped = dict(spec, **{s: other_parts[s] for s in specs.PART_SLOTS})
            a = garment.build_garment(spec, np.random.default_rng(5))
            b = garment.build_garment(swapped, np.random.default_rng(5))
            np.testing.assert_array_equal(a.keypoints, b.keypoints)
            assert all(np.array_equal(x, y) for x, y in zip(a.shapes, b.shapes)) and len(a.shapes) == len(b.shapes)


_PART_KEYPOINTS = {"neck": [0, 1], "cuff": [2, 3], "waist": [4, 5], "hem": [6, 7]}


def _segment_distance(pts: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Smallest distance from any of `pts` to the segment a-b."""
    t = np.clip((pts - a) @ (b - a) / max(float((b - a) @ (b - a)), 1e-12), 0, 1)
    return float(np.linalg.norm(pts - (a + t[:, None] * (b - a)), axis=1).min())


def test_local_parts_are_drawn_at_their_functional_points():
    """Every drawn neckline/collar, waist and hem part touches the line between its two landmarks, and
    every cuff touches a sleeve landmark (trouser-leg cuffs of lower-body garments: a hem landmark)."""
    rng = np.random.default_rng(4)
    checked = collections.Counter()
    for category in specs.RENDERED_CATEGORIES:
        for _ in range(20):
            spec = specs.sample_spec(category, rng, None, 1.0)
            bare = dict(spec, **{s: specs._empty(s) for s in specs.PART_SLOTS})
            base = {d.pts.tobytes() for d in garment.build_garment(bare, np.random.default_rng(0)).details}
            for slot, kps in _PART_KEYPOINTS.items():
                if spec[slot] is None or spec[slot] == "band":  # a kimono band runs down the whole front
                    continue
                g = garment.build_garment(dict(bare, **{slot: spec[slot]}), np.random.default_rng(0))
                if slot == "cuff" and specs._CATEGORY_TYPE[category] == 2:
                    kps = [6, 7]
                a, b = g.keypoints[kps]
                added = [d for d in g.details if d.pts.tobytes() not in base]
                for det in added:
                    gap = _segment_distance(det.pts, a, b) if slot != "cuff" else \
                        np.linalg.norm(det.pts[:, None, :] - np.stack([a, b])[None], axis=-1).min()
                    assert gap < (1.0 if slot == "cuff" else 0.7), (category, slot, spec[slot], gap)
                checked[slot] += len(added) > 0
    assert min(checked.values()) > 20, checked


def test_annotation_noise_jitters_written_landmarks_by_the_configured_amount():
    rng = np.random.default_rng(0)
    n = 20000
    box = (101, 51, 300, 450)  # 200 x 400 px
    keypoints = np.column_stack([rng.uniform(150, 250, n), rng.uniform(150, 350, n)])
    truth = [(int(v), math.floor(x) + 1, math.floor(y) + 1) for v, (x, y) in zip(rng.integers(0, 2, n), keypoints)]
    written = scene.annotate_landmarks(keypoints, truth, box, 0.03, 0.1, np.random.default_rng(1))
    dx = np.array([w[1] - t[1] for w, t in zip(written, truth)]) / 200
    dy = np.array([w[2] - t[2] for w, t in zip(written, truth)]) / 400
    assert abs(dx.std() - .03) < .002 and abs(dy.std() - .03) < .002 and abs(dx.mean()) < .002
    flipped = np.mean([w[0] != t[0] for w, t in zip(written, truth)])
    assert abs(flipped - 0.1) < 0.01
    exact = scene.annotate_landmarks(keypoints, truth, box, 0.0, 0.0, np.random.default_rng(1))
    assert exact == truth
    truncated = [(2, 1, 200)] * 500
    kept = scene.annotate_landmarks(np.full((500, 2), -30.), truncated, (1, 1, 300, 300), .02, .5,
                                    np.random.default_rng(2))
    assert all(v == 2 and 1 <= x <= 300 and 1 <= y <= 300 for v, x, y in kept)  # never flipped, in the box


@pytest.mark.slow
def test_written_landmarks_of_a_tree_carry_the_default_noise(tree, clean_tree):
    (out, _), (clean, _) = tree, clean_tree
    noisy, exact = (rows_by_name(root, "Anno/list_landmarks.txt") for root in (out, clean))
    boxes = rows_by_name(clean, "Anno/list_bbox.txt")
    offsets, flips, total = [], 0, 0
    for name, row in exact.items():
        x1, y1, x2, y2 = map(int, boxes[name].split()[1:])
        a = np.array([int(t) for t in row.split()[2:]]).reshape(-1, 3)
        b = np.array([int(t) for t in noisy[name].split()[2:]]).reshape(-1, 3)
        inner = (a[:, 0] == 0) & (a[:, 1] - x1 > 20) & (x2 - a[:, 1] > 20)
        offsets += list((b[inner, 1] - a[inner, 1]) / (x2 - x1 + 1))
        flips += int(((a[:, 0] != b[:, 0]) & (a[:, 0] < 2)).sum())
        total += int((a[:, 0] < 2).sum())
        assert ((a[:, 0] == 2) == (b[:, 0] == 2)).all()
    assert 0.012 < np.std(offsets) < 0.03 and flips / total < 0.1


@pytest.mark.slow                 # 8,100 sampled garment specs
def test_attributes_correlate_with_the_category_but_are_not_a_function_of_it():
    rng = np.random.default_rng(2)
    vectors = {c: [tuple(specs.attribute_vector(specs.sample_spec(c, rng))) for _ in range(300)]
               for c in specs.RENDERED_CATEGORIES}
    for category, vs in vectors.items():
        counts = collections.Counter(vs)
        assert len(counts) >= 15 and counts.most_common(1)[0][1] < 0.35 * len(vs), category
    rate = {c: np.mean(np.array(vs) > 0, axis=0) for c, vs in vectors.items()}
    idx = specs._ATTRIBUTE_INDEX
    assert rate["Hoodie"][idx["hooded"]] > .8 and 0 < rate["Jacket"][idx["hooded"]] < .3
    assert rate["Jeans"][idx["denim"]] > .6 and rate["Sweater"][idx["denim"]] < .1
    overall = np.mean([np.mean(np.array(vs) > 0, axis=0) for vs in vectors.values()], axis=0)
    assert overall.max() > 8 * overall.min() > 0  # a long tail, every attribute occurs
    shared = [a for a in range(len(overall)) if sum(r[a] > .05 for r in rate.values()) >= 3]
    assert len(shared) > 0.7 * len(overall)  # most attributes occur in several categories


def test_specs_only_label_what_can_be_drawn():
    rng = np.random.default_rng(0)
    sizes = []
    for category in specs.RENDERED_CATEGORIES:
        ctype = specs._CATEGORY_TYPE[category]
        for g in (0.0, 1.0):
            for _ in range(40):
                spec = specs.sample_spec(category, rng, None, g)
                labels = set(specs.spec_labels(spec))
                sizes.append(len(labels))
                assert specs._MIN_POSITIVES <= len(labels) <= specs._MAX_POSITIVES + 2
                assert sum(n in labels for n in specs._ATTRIBUTE_GROUPS[1]) == 1  # exactly one texture
                sleeves = {"sleeveless", "short sleeve", "long sleeve"} & labels
                assert len(sleeves) == (1 if ctype != 2 else 0)
                if spec["cuff"] is not None:
                    assert spec["lower"] == "legs" if ctype == 2 else spec["sleeve"] != "none"
                if ctype == 2:
                    assert spec["neck"] is None and spec["front"] is None and spec["graphic"] is None
                if ctype == 1:
                    assert spec["waist"] is None and spec["lower"] is None
                assert ("hooded" in labels) == (spec["neck"] == "hood")
                assert spec["cords"] is None or spec["neck"] == "hood"
                assert spec["palette"] == "default" or spec["fabric"] != "denim"
                assert specs.attribute_vector(spec).count(1) == len(labels)
    assert 4 <= np.mean(sizes) <= 7


def test_round_trip_through_the_reader(tree):
    """The reader parses the synthetic tree, and its labels agree with what the generator planned."""
    from vfu_nb.data.annotations import load_annotations
    from vfu_nb.data.dataset import DeepFashionC
    out, summary = tree
    ann = load_annotations(out)
    plans = planning.plan_images(len(ann), 0)
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


# --------------------------------------------------------------------------------------------------
# The negative control: local evidence displaced away from the functional points
# --------------------------------------------------------------------------------------------------

ANNOTATION_RELS = list(PER_IMAGE_FILES) + ["Anno/list_category_cloth.txt", "Anno/list_attr_cloth.txt"]


def test_default_output_is_pinned(tree):
    """The default tree is what it was before the evidence_placement option (digests taken with the code
    before it, on the locked library stack): its annotation files, JPEGs and rendered pixels."""
    out, _ = tree
    plans = planning.plan_images(N, 0)[:4]
    digests = [hashlib.sha256(b"".join(parts)).hexdigest() for parts in (
        [(out / rel).read_bytes() for rel in PER_IMAGE_FILES],
        [(out / p.name).read_bytes() for p in plans],
        [scene.render_image(p, 0)[0].tobytes() for p in plans])]
    assert digests == ["6d2d00606473c51c4060ff8ece49fad5461291de872051241c56f3dddf025fdc",
                       "d7467c7390f9763738e0082d274af008a8dabda10edb9119ee7fe90be145bfc9",
                       "0e21fec4f9cfb9d0cbdaa847442d8445526bff84f0c5d9f3905cf115d41d8b40"]
    explicit, _ = scene.render_image(plans[0], 0, {"evidence_placement": "functional"})
    assert explicit.tobytes() == scene.render_image(plans[0], 0)[0].tobytes()


@pytest.mark.slow
def test_displaced_tree_has_the_functional_annotations_byte_for_byte(tree, displaced_tree):
    (out, summary), (moved, moved_summary) = tree, displaced_tree
    for rel in ANNOTATION_RELS:
        assert (moved / rel).read_bytes() == (out / rel).read_bytes(), rel
    names = list(rows_by_name(out, "Anno/list_category_img.txt"))
    assert all((moved / name).read_bytes() != (out / name).read_bytes() for name in names)
    assert moved_summary["settings"] == {**settings.default_settings(), "evidence_placement": "displaced"}
    assert {k: v for k, v in moved_summary.items() if k not in ("settings", "bytes", "seconds", "out")} == \
        {k: v for k, v in summary.items() if k not in ("settings", "bytes", "seconds", "out")}
    assert driver._cached_summary(moved, N, 0, settings.default_settings()) is None
    assert driver._cached_summary(out, N, 0, moved_summary["settings"]) is None
    again = driver.generate(moved, N, seed=0, progress=False, evidence_placement="displaced")
    assert again["cached"] is True


def test_displacement_changes_only_the_garment_pixels():
    """Same spec, labels, box and landmarks; the pixels change inside the box (the parts moved) and, up to
    the rounding of the global contrast step, nowhere beyond a margin of 10 % of the box side (details
    such as belts and collars overhang the silhouette a little)."""
    for plan in planning.plan_images(N, 0)[::12]:
        (a, ra), (b, rb) = (scene.render_image(plan, 0, {"evidence_placement": p})
                            for p in settings.EVIDENCE_PLACEMENTS)
        np.testing.assert_array_equal(ra.pop("keypoints"), rb.pop("keypoints"))
        assert ra == rb
        diff = np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max(-1)
        x1, y1, x2, y2 = ra["bbox"]
        mx, my = math.ceil(.1 * (x2 - x1 + 1)), math.ceil(.1 * (y2 - y1 + 1))
        inside = diff[y1 - 1:y2, x1 - 1:x2].copy()
        diff[max(0, y1 - 1 - my):y2 + my, max(0, x1 - 1 - mx):x2 + mx] = 0
        assert (inside > 2).mean() > .005 and diff.max() <= 2, plan.index


def test_displaced_parts_are_rigidly_moved_into_the_body():
    """Every part (each half of a left/right pair) is translated as a whole, its centre lands inside the
    body, away from the keypoints where the body allows; silhouette and keypoints are untouched."""
    rng = np.random.default_rng(6)
    clearances = []
    for category in specs.RENDERED_CATEGORIES:
        for k in range(4):
            g = garment.build_garment(specs.sample_spec(category, rng, None, 1.0), np.random.default_rng(k))
            moved = displaced.displace_parts(g, np.random.default_rng(100 + k))
            assert moved.shapes is g.shapes and moved.keypoints is g.keypoints
            assert (len(moved.extras), len(moved.strands), len(moved.details)) == \
                (len(g.extras), len(g.strands), len(g.details))
            halves = [h for part in g.parts for h in displaced._halves(part)]
            assert [h.name for h in halves] == [m.name for m in moved.parts] and halves
            for before, after in zip(halves, moved.parts):
                shifts = after.points() - before.points()
                np.testing.assert_allclose(shifts, np.broadcast_to(shifts[0], shifts.shape), atol=1e-9)
                pts = after.points()
                centre = (pts.min(0) + pts.max(0)) / 2
                assert displaced._inside(g.shapes[0], centre[None])[0], (category, after.name)
                keypoints = g.keypoints[~np.isnan(g.keypoints[:, 0])]
                clearances.append(np.linalg.norm(keypoints - centre, axis=1).min())
    assert np.mean(np.array(clearances) >= displaced._DISPLACE_CLEARANCE) > .8


@pytest.mark.slow
def test_displaced_evidence_lies_away_from_the_landmarks():
    """The measure of docs/synthetic.md on 60 images: functional parts lie at the landmarks, displaced
    ones away from them (this fails if the option moves nothing)."""
    report = evidence.placement_report(60, 0)
    parts = report["parts"]
    functional, moved = parts["all"]["functional"], parts["all"]["displaced"]
    assert functional["near_mean"] > .45 and moved["near_mean"] < .08
    assert moved["centre_median"] > 2 * functional["centre_median"]
    for name in ("neck", "cuff", "waist", "hem"):
        assert parts[name]["functional"]["near_mean"] > .4, name
        assert parts[name]["displaced"]["near_mean"] < .5 * parts[name]["functional"]["near_mean"], name
    assert parts["neck"]["displaced"]["centre_median"] > 2 * parts["neck"]["functional"]["centre_median"]
    assert 0 < report["changed"]["image_mean"] < report["changed"]["box_mean"] < .5
