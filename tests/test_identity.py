"""vfu_nb.data.identity: a data tree is the same whatever path reaches it, and two trees that differ only in
their images (the synthetic default and displaced trees share every annotation file) are not."""

import hashlib
import json
import os
import shutil

import pytest

from vfu_nb.data.annotations import image_root, load_annotations, write_annotations
from vfu_nb.data.identity import annotations_digest, same_tree, tree_digest


@pytest.fixture
def two_copies(synth_root, tmp_path):
    a, b = tmp_path / "a" / "df", tmp_path / "b" / "df"
    shutil.copytree(synth_root, a)
    shutil.copytree(synth_root, b)
    return a, b


def test_a_copy_and_a_symlink_have_the_digest_of_the_original(synth_root, two_copies, tmp_path):
    a, _ = two_copies
    link = tmp_path / "link"
    link.symlink_to(a, target_is_directory=True)
    digest = tree_digest(synth_root)
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert tree_digest(a) == digest and tree_digest(link) == digest and tree_digest(str(link)) == digest


@pytest.mark.parametrize("change", ["image size", "missing image", "annotation", "synthetic.json"])
def test_the_digest_changes_with_the_images_the_annotations_and_the_generator_record(two_copies, change):
    a, b = two_copies
    ann = load_annotations(b)
    image = image_root(b) / ann.image_names[7]
    if change == "image size":          # what the displaced tree changes: images, not annotations
        image.write_bytes(image.read_bytes() + b"\0")
    elif change == "missing image":
        image.unlink()
    elif change == "annotation":        # one box one pixel wider (rewritten unchanged, the files are the same)
        write_annotations(b, ann)
        assert tree_digest(a) == tree_digest(b)
        ann.bbox[7, 2] += 1
        write_annotations(b, ann)
    else:
        marker = b / "synthetic.json"
        record = json.loads(marker.read_text())
        record["settings"]["evidence_placement"] = "displaced"
        marker.write_text(json.dumps(record))
    assert tree_digest(a) != tree_digest(b)


def test_a_folder_without_annotation_files_has_no_digest(two_copies, tmp_path):
    a, _ = two_copies
    assert tree_digest(tmp_path / "empty") is None
    (a / "Anno" / "list_landmarks.txt").unlink()
    assert tree_digest(a) is None


def test_same_tree_accepts_a_moved_tree_by_its_recorded_digest_and_refuses_another(synth_root, two_copies, tmp_path):
    a, b = two_copies
    stored = {"data_root": str(a), "resolved": {"data_digest": tree_digest(a)}}
    assert same_tree(stored, str(a)) and same_tree(stored, os.path.relpath(a))
    moved = tmp_path / "moved"
    os.rename(a, moved)                                      # the recorded root is gone; the digest decides
    assert same_tree(stored, str(moved)) and same_tree(stored, str(synth_root))
    image = image_root(b) / load_annotations(b).image_names[0]
    image.write_bytes(image.read_bytes()[:-1])
    assert not same_tree(stored, str(b))
    assert not same_tree(stored, str(tmp_path / "nowhere"))
    assert same_tree({"data_root": None}, None) and not same_tree({"data_root": None}, str(b))


def test_a_run_from_before_digests_compares_with_its_recorded_root_while_that_exists(two_copies, tmp_path):
    a, b = two_copies
    old_run = {"data_root": str(a), "resolved": {"device": "cpu"}}       # no data_digest
    assert same_tree(old_run, str(b))
    bad = a / "Anno" / "list_category_img.txt"
    good = bad.read_text()
    bad.write_text(good.replace("\n", "\nnot a record\n", 3))                 # the old tree is unreadable now
    assert not same_tree(old_run, str(b))
    bad.write_text(good)
    shutil.rmtree(a)
    assert not same_tree(old_run, str(b))                    # nothing left to compare with: refused


def test_the_annotations_digest_has_a_fixed_format(synth_root):
    """Committed baselines (results/*/baselines/<tree>.json) record it: per file in key order, the key, a NUL, its
    bytes, a NUL."""
    from vfu_nb.data.annotations import annotation_paths

    h = hashlib.sha256()
    for key, path in sorted(annotation_paths(synth_root).items()):
        h.update(key.encode() + b"\0" + path.read_bytes() + b"\0")
    assert annotations_digest(synth_root) == h.hexdigest()


def test_a_recorded_digest_wins_over_the_recorded_root_that_changed_since(two_copies):
    """The run recorded the digest of the tree it trained on; its old folder was edited afterwards, and an untouched
    copy elsewhere is still the same data."""
    a, b = two_copies
    stored = {"data_root": str(a), "resolved": {"data_digest": tree_digest(a)}}
    ann = load_annotations(a)
    ann.bbox[5, 2] += 1
    write_annotations(a, ann)
    assert tree_digest(a) != stored["resolved"]["data_digest"] and same_tree(stored, str(b))
