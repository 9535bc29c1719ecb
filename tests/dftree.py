"""A tiny hand-written DeepFashion-C tree (3 images, 4 categories, 5 attributes) for parser tests."""

from pathlib import Path

import numpy as np
from PIL import Image

NAMES = [
    "img/Striped_Knit_Tee/img_00000001.jpg",
    "img/Denim_Shorts/img_00000001.jpg",
    "img/Floral_Dress/img_00000001.jpg",
]


def pad(name: str) -> str:
    return name.ljust(71) if len(name) < 71 else name + " "


FILES = {
    "Anno/list_category_cloth.txt": [
        "4", "category_name  category_type",
        "Tee            1", "Shorts         2", "Dress          3", "Cape           3"],
    "Anno/list_category_img.txt": [
        "3", "image_name  category_label",
        pad(NAMES[0]) + "1", pad(NAMES[1]) + "2", pad(NAMES[2]) + "3"],
    "Anno/list_attr_cloth.txt": [
        "5", "attribute_name  attribute_type",
        "striped                      1", "denim                        2",
        "a-line                       3     ", "v-neck                       4", "boho chic                    5"],
    "Anno/list_attr_img.txt": [
        "3", "image_name  attribute_labels",
        pad(NAMES[0]) + " 1 -1 -1 -1 -1", pad(NAMES[1]) + "-1  1 -1  0 -1", pad(NAMES[2]) + "-1 -1  1  1  1"],
    "Anno/list_bbox.txt": [
        "3", "image_name  x_1  y_1  x_2  y_2",
        pad(NAMES[0]) + "011 021 090 100", pad(NAMES[1]) + "001 001 060 080", pad(NAMES[2]) + "021 011 080 120"],
    "Anno/list_landmarks.txt": [
        "3", "image_name  clothes_type  variation_type  landmark_visibility_1 ...",
        pad(NAMES[0]) + "1  0 040 030  0 060 030  1 015 050  0 085 050  0 030 095  2 070 099 ",
        pad(NAMES[1]) + "2  0 010 010  0 050 010  0 012 070  1 048 075 ",
        pad(NAMES[2]) + "3  0 040 020  0 060 020  0 025 040  0 075 040  0 040 060  0 060 060  0 030 110  0 070 110 "],
    "Eval/list_eval_partition.txt": [
        "3", "image_name  evaluation_status",
        pad(NAMES[0]) + "train", pad(NAMES[1]) + "val", pad(NAMES[2]) + "test"],
}
IMAGE_SIZES = [(100, 120), (64, 90), (100, 130)]


def write_tree(root: Path, files=None, images=True) -> Path:
    """Write the tiny tree (optionally with some files replaced) and its JPEGs; return root."""
    root = Path(root)
    for rel, lines in {**FILES, **(files or {})}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if lines is not None:
            path.write_text("\n".join(lines) + "\n")
    if images:
        rng = np.random.default_rng(0)
        for name, (w, h) in zip(NAMES, IMAGE_SIZES):
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path, quality=95)
    return root


def with_line(rel: str, line_no: int, text: str) -> dict:
    """FILES override replacing 1-based line ``line_no`` of ``rel`` by ``text``."""
    lines = list(FILES[rel])
    lines[line_no - 1] = text
    return {rel: lines}
