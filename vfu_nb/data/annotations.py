"""Reader for the DeepFashion-C annotation files (the "Category and Attribute Prediction" benchmark).

Every file has the same layout: line 1 is the record count, line 2 a header, then one record per line,
space padded. Records of the per-image files are an image name followed by integers; the two vocabulary
files hold a name (which may contain spaces) followed by a type digit. Parsing is vectorised with numpy
so that the 289,222 x 1,000 attribute matrix is read in seconds.

Errors raise :class:`AnnotationError` naming the file, the 1-based line number (count and header lines
included) and the offending text. Nothing is dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vfu_nb.conventions import (  # noqa: F401 (re-exported: the reader's vocabulary)
    ATTRIBUTE_TYPE_NAMES, CLOTHES_TYPE_NAMES, FLIP_PAIRS, LANDMARK_NAMES, SLOTS_BY_CLOTHES_TYPE, SPLITS,
)

ANNOTATION_FILES = {
    "category_cloth": "Anno/list_category_cloth.txt",
    "category_img": "Anno/list_category_img.txt",
    "attr_cloth": "Anno/list_attr_cloth.txt",
    "attr_img": "Anno/list_attr_img.txt",
    "bbox": "Anno/list_bbox.txt",
    "landmarks": "Anno/list_landmarks.txt",
    "partition": "Eval/list_eval_partition.txt",
}

_CHUNK_LINES = 16384
NAME_COLUMN = 71   # image names are padded so the next field starts here, as in the real files


class AnnotationError(ValueError):
    """Malformed or inconsistent annotation file; the message names file, line and text."""


def _error(path, line_no, problem, text=None) -> AnnotationError:
    where = f"{path}:{line_no}" if line_no else str(path)
    shown = "" if text is None else f": {text[:160]!r}"
    return AnnotationError(f"{where}: {problem}{shown}")


@dataclass
class Records:
    """The records of one file: names (one per line) and the integers after them."""

    path: Path
    names: np.ndarray            # str, one per record
    counts: np.ndarray           # int, number of integers on each record line
    values: np.ndarray           # int32, all integers concatenated in line order
    first_line: int = 3          # 1-based line number of the first record

    def line_no(self, i: int) -> int:
        return self.first_line + int(i)

    def line_text(self, i: int) -> str:
        with open(self.path, "rb") as f:
            for n, line in enumerate(f, start=1):
                if n == self.line_no(i):
                    return line.decode("utf-8", "replace").rstrip("\r\n")
        return ""

    def fail(self, i: int, problem: str) -> AnnotationError:
        return _error(self.path, self.line_no(i), problem, self.line_text(i))

    def table(self, width: int) -> np.ndarray:
        """Values as an (N, width) array; raises on the first line with another field count."""
        bad = np.flatnonzero(self.counts != width)
        if bad.size:
            i = bad[0]
            raise self.fail(i, f"expected {width + 1} fields, found {self.counts[i] + 1}")
        return self.values.reshape(len(self.names), width)


def _split_head(path: Path, strict_count: bool) -> tuple[np.ndarray, int]:
    """Return the bytes of the record lines (a uint8 view, trailing blank lines dropped) and their count."""
    if not path.is_file():
        raise _error(path, None, "annotation file not found")
    raw = path.read_bytes()
    first = raw.find(b"\n")
    second = raw.find(b"\n", first + 1) if first >= 0 else -1
    if first < 0 or second < 0:
        raise _error(path, 1, "expected a count line and a header line")
    count_text = raw[:first].decode("utf-8", "replace").strip()
    if not count_text.isdigit():
        raise _error(path, 1, "first line must be the record count", count_text)
    end = len(raw)
    while end > second + 1 and raw[end - 1] in b" \t\r\n":
        end -= 1
    body = np.frombuffer(raw, dtype=np.uint8, count=end - second - 1, offset=second + 1)
    rows = raw.count(b"\n", second + 1, end) + 1 if body.size else 0
    if strict_count and rows != int(count_text):
        raise _error(path, 1, f"count line says {count_text} records but the file holds {rows}", count_text)
    return body, rows


def _line_bounds(buf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    newlines = np.flatnonzero(buf == 10)
    starts = np.concatenate([[0], newlines + 1])
    ends = np.concatenate([newlines, [buf.size]])
    return starts, ends


def _parse_chunk(buf: np.ndarray, path: Path, first_line: int):
    """Tokenise a block of whole record lines: names, integer counts per line and the integers."""
    starts, ends = _line_bounds(buf)
    n_lines = starts.size
    space = buf <= 32          # separators: space, tab, CR (and the LF between lines)
    token = ~space
    prev_space = np.concatenate([[True], space[:-1]])
    next_space = np.concatenate([space[1:], [True]])
    tok_start = np.flatnonzero(token & prev_space)
    tok_end = np.flatnonzero(token & next_space) + 1
    tok_line = np.searchsorted(starts, tok_start, side="right") - 1
    per_line = np.bincount(tok_line, minlength=n_lines)
    empty = np.flatnonzero(per_line == 0)
    if empty.size:
        raise _error(path, first_line + int(empty[0]), "empty record line")
    is_name = np.concatenate([[True], tok_line[1:] != tok_line[:-1]])
    raw = buf.tobytes()
    names = np.array([raw[s:e].decode("utf-8", "replace")
                      for s, e in zip(tok_start[is_name], tok_end[is_name])])
    num_start, num_end, num_line = tok_start[~is_name], tok_end[~is_name], tok_line[~is_name]
    bad = _bad_int_tokens(buf, num_start, num_end)
    if bad.size:
        line = int(num_line[bad[0]])
        text = raw[starts[line]:ends[line]].decode("utf-8", "replace")
        token_text = raw[num_start[bad[0]]:num_end[bad[0]]].decode("utf-8", "replace")
        raise _error(path, first_line + line, f"expected an integer, found {token_text!r}", text)
    return names, per_line - 1, _parse_ints(buf, num_start, num_end)


def _bad_int_tokens(buf, start, end) -> np.ndarray:
    """Indices of tokens that are not an optional '-' followed by 1-9 digits."""
    length = end - start
    digit = (buf >= 48) & (buf <= 57)
    has_sign = buf[start] == 45
    first_digit = start + has_sign
    n_digits = length - has_sign
    ok = (n_digits >= 1) & (n_digits <= 9)
    # every byte of the digit part must be a digit: count digits via a prefix sum
    csum = np.concatenate([[0], np.cumsum(digit, dtype=np.int64)])
    ok &= (csum[end] - csum[np.minimum(first_digit, end)]) == n_digits
    return np.flatnonzero(~ok)


def _parse_ints(buf, start, end) -> np.ndarray:
    """Vectorised int parsing of tokens given by byte ranges (validated separately)."""
    length = end - start
    has_sign = buf[start] == 45
    first = start + has_sign
    width = int(length.max()) if length.size else 0
    value = np.zeros(start.size, dtype=np.int64)
    for j in range(width):
        pos = first + j
        inside = pos < end
        digit = buf[np.minimum(pos, buf.size - 1)].astype(np.int64) - 48
        value = np.where(inside, value * 10 + np.clip(digit, 0, 9), value)
    value = np.where(has_sign, -value, value)
    return value.astype(np.int32)


def _parse_aligned_labels(buf: np.ndarray):
    """Fastest path: every line is ``pad_name(name)`` + ``'%2d'`` labels joined by one space (the real layout).

    Works on a 2-D view of the chunk, so it touches only the label columns. Returns None when the chunk
    is laid out in any other way (then the slower paths parse it and report errors).
    """
    nl = np.flatnonzero(buf == 10)
    length = int(nl[0]) if nl.size else buf.size
    n = nl.size + 1
    if n * (length + 1) - 1 != buf.size or length < NAME_COLUMN + 2 or (length - NAME_COLUMN + 1) % 3:
        return None
    rows = np.concatenate([buf, np.array([10], np.uint8)]).reshape(n, length + 1)
    if not (rows[:, -1] == 10).all() or not (rows[:, NAME_COLUMN - 1] == 32).all():
        return None
    sign, digit = rows[:, NAME_COLUMN:length:3], rows[:, NAME_COLUMN + 1:length:3]
    gaps = rows[:, NAME_COLUMN + 2:length:3]
    if not (((sign == 32) | (sign == 45)).all() and ((digit == 48) | (digit == 49)).all() and (gaps == 32).all()):
        return None
    if ((sign == 45) & (digit == 48)).any():      # "-0"
        return None
    values = (digit - 48).astype(np.int8)
    values[sign == 45] *= -1
    if (rows[:, :NAME_COLUMN] < 32).any():     # a tab, CR, ... would split a name, as in the general tokeniser
        return None
    names = [bytes(r[:NAME_COLUMN]).decode("utf-8", "replace").rstrip() for r in rows]
    if any(" " in name or not name for name in names):
        return None
    return np.array(names), np.full(n, values.shape[1]), values.ravel()


def _inside(size: int, begins: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """Boolean mask of length ``size``: True in every half-open interval [begins[i], stops[i]) (disjoint)."""
    edges = np.zeros(size + 1, dtype=np.int8)
    np.add.at(edges, begins, 1)
    np.add.at(edges, stops, -1)
    return np.cumsum(edges[:-1], dtype=np.int8).astype(bool)


def _parse_label_chunk(buf: np.ndarray):
    """Fast path for lines of single-digit labels (``1``, ``-1``, ``0``): names, counts and values.

    Returns None when the chunk holds anything else, so that the general tokeniser reports the error.
    """
    starts, ends = _line_bounds(buf)
    raw = buf.tobytes()
    name_end = np.array([raw.find(b" ", s, e) % (len(raw) + 1) for s, e in zip(starts, ends)])
    if np.any((name_end < starts) | (name_end >= ends)):
        return None
    space = buf <= 32
    if np.any(name_end == starts) or np.any(_inside(buf.size, starts, name_end) & space):   # a tab or CR ends a name
        return None
    region = _inside(buf.size, name_end, ends)             # the value part of each line
    digit = (buf == 48) | (buf == 49)
    minus = buf == 45
    if np.any(region & ~(digit | minus | space)):
        return None
    after = np.concatenate([buf[1:], np.array([10], np.uint8)])
    before = np.concatenate([np.array([32], np.uint8), buf[:-1]])
    if np.any(region & minus & ~((after == 48) | (after == 49))) or \
            np.any(region & digit & ~((after <= 32) & ((before <= 32) | (before == 45)))):
        return None
    positions = np.flatnonzero(region & digit)
    values = (buf[positions] - 48).astype(np.int8)
    values[buf[positions - 1] == 45] *= -1
    counts = np.diff(np.searchsorted(positions, np.concatenate([starts, [buf.size]])))
    names = np.array([raw[s:e].decode("utf-8", "replace") for s, e in zip(starts, name_end)])
    return names, counts, values


def read_records(path, strict_count: bool = True, labels: bool = False) -> Records:
    """Read a per-image file (name followed by integers) into :class:`Records`.

    ``strict_count=False`` accepts a count line that disagrees with the rows (the published excerpts keep
    the full file's count); the default treats that as an error. ``labels=True`` tries a faster path for
    files of single-digit labels (``list_attr_img.txt``), falling back to the general one.
    """
    path = Path(path)
    buf, rows = _split_head(path, strict_count)
    starts, _ = _line_bounds(buf) if rows else (np.zeros(0, int), None)
    names, counts, values = [], [], []
    for c in range(0, rows, _CHUNK_LINES):
        lo = starts[c]
        hi = starts[c + _CHUNK_LINES] - 1 if c + _CHUNK_LINES < rows else buf.size
        parsed = (_parse_aligned_labels(buf[lo:hi]) or _parse_label_chunk(buf[lo:hi])) if labels else None
        n, k, v = parsed or _parse_chunk(buf[lo:hi], path, first_line=3 + c)
        names.append(n), counts.append(k), values.append(v)
    if not rows:
        return Records(path, np.array([], dtype=str), np.zeros(0, int), np.zeros(0, np.int32))
    return Records(path, np.concatenate(names), np.concatenate(counts), np.concatenate(values))


def read_vocabulary(path, strict_count: bool = True) -> tuple[list[str], np.ndarray]:
    """Read a ``name  type`` vocabulary file (names may contain spaces; rows may end in spaces)."""
    path = Path(path)
    body, _ = _split_head(path, strict_count)
    names, types = [], []
    for i, line in enumerate(body.tobytes().decode("utf-8").split("\n")):
        parts = line.rstrip().rsplit(None, 1)
        if len(parts) != 2 or not parts[1].isdigit():
            raise _error(path, 3 + i, "expected '<name> <type>'", line)
        names.append(parts[0])
        types.append(int(parts[1]))
    return names, np.array(types, dtype=np.int64)


def read_partition(path, strict_count: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Read ``Eval/list_eval_partition.txt``: image names and their status (train/val/test)."""
    path = Path(path)
    body, _ = _split_head(path, strict_count)
    names, status = [], []
    for i, line in enumerate(body.tobytes().decode("utf-8").split("\n")):
        parts = line.split()
        if len(parts) != 2:
            raise _error(path, 3 + i, f"expected 2 fields, found {len(parts)}", line)
        if parts[1] not in SPLITS:
            raise _error(path, 3 + i, f"evaluation status must be one of {SPLITS}", line)
        names.append(parts[0])
        status.append(parts[1])
    return np.array(names), np.array(status)


@dataclass
class Annotations:
    """All labels of DeepFashion-C, one row per image of ``list_category_img.txt``."""

    root: Path
    image_names: np.ndarray          # str (N,)
    split: np.ndarray                # str (N,) train/val/test
    clothes_type: np.ndarray         # int64 (N,) 1 upper, 2 lower, 3 full
    category: np.ndarray             # int64 (N,) 0-based
    category_names: list[str]
    category_types: np.ndarray       # int64 (C,) 1..3
    attributes: np.ndarray           # int8 (N, A): 1 positive, -1 negative, 0 unknown
    attribute_names: list[str]
    attribute_types: np.ndarray      # int64 (A,) 1..5
    bbox: np.ndarray                 # float32 (N, 4) 0-based half-open x1, y1, x2, y2
    landmarks: np.ndarray            # float32 (N, 8, 2) pixel coordinates as in the file
    landmark_visibility: np.ndarray  # int64 (N, 8): 0 visible, 1 occluded, 2 truncated, -1 absent
    files: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.image_names)

    def indices(self, split: str) -> np.ndarray:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return np.flatnonzero(self.split == split)

    def image_path(self, i: int) -> Path:
        return image_root(self.root) / self.image_names[i]


def annotation_paths(root) -> dict[str, Path]:
    """Paths of the seven files, accepting ``Anno/`` or the newer ``Anno_coarse/`` folder."""
    root = Path(root)
    anno = "Anno_coarse" if (root / "Anno_coarse").is_dir() and not (root / "Anno").is_dir() else "Anno"
    return {k: root / v.replace("Anno/", f"{anno}/") for k, v in ANNOTATION_FILES.items()}


def image_root(root) -> Path:
    """Folder that holds ``img/...``: the root itself or ``Img/`` (the official archive layout)."""
    root = Path(root)
    if not (root / "img").is_dir() and (root / "Img" / "img").is_dir():
        return root / "Img"
    return root


def _align(reference: np.ndarray, records_names: np.ndarray, path: Path, ref_path: Path) -> np.ndarray:
    """Row order mapping reference names to rows of another file; errors name the odd image."""
    if len(records_names) == len(reference) and np.array_equal(records_names, reference):
        return np.arange(len(reference))
    position = {}
    for i, name in enumerate(records_names):
        if name in position:
            raise _error(path, 3 + i, "image listed twice", name)
        position[name] = i
    order = np.empty(len(reference), dtype=np.int64)
    for i, name in enumerate(reference):
        j = position.pop(name, None)
        if j is None:
            raise _error(path, None, f"image {name} (line {3 + i} of {ref_path.name}) is missing from this file")
        order[i] = j
    if position:
        name, j = min(position.items(), key=lambda kv: kv[1])
        raise _error(path, 3 + j, f"image is absent from {ref_path.name}", name)
    return order


def _check_range(rec: Records, column: np.ndarray, lo: int, hi: int, what: str) -> None:
    bad = np.flatnonzero((column < lo) | (column > hi))
    if bad.size:
        raise rec.fail(bad[0], f"{what} {column[bad[0]]} out of range {lo}..{hi}")


def _read_landmarks(rec: Records, category_type: np.ndarray, order_check: bool = True):
    """Spread the 6/4/8 triples of each row into the 8 fixed slots."""
    n = len(rec.names)
    offsets = np.concatenate([[0], np.cumsum(rec.counts)])[:-1]
    if np.any(rec.counts == 0):
        raise rec.fail(np.flatnonzero(rec.counts == 0)[0], "missing clothes_type")
    ctype = rec.values[offsets].astype(np.int64)
    _check_range(rec, ctype, 1, 3, "clothes_type")
    landmarks = np.zeros((n, 8, 2), dtype=np.float32)
    visibility = np.full((n, 8), -1, dtype=np.int64)
    for t, slots in SLOTS_BY_CLOTHES_TYPE.items():
        rows = np.flatnonzero(ctype == t)
        if not rows.size:
            continue
        bad = rows[rec.counts[rows] != 1 + 3 * len(slots)]
        if bad.size:
            i = bad[0]
            raise rec.fail(i, f"clothes_type {t} needs {len(slots)} (visibility x y) triples "
                              f"({2 + 3 * len(slots)} fields), found {rec.counts[i] + 1} fields")
        idx = offsets[rows, None] + 1 + np.arange(3 * len(slots))[None, :]
        triples = rec.values[idx].reshape(len(rows), len(slots), 3)
        vis = triples[..., 0]
        bad = np.flatnonzero(~np.isin(vis, (0, 1, 2)).all(axis=1))
        if bad.size:
            raise rec.fail(rows[bad[0]], "landmark visibility must be 0, 1 or 2")
        visibility[np.ix_(rows, slots)] = vis
        landmarks[np.ix_(rows, slots)] = triples[..., 1:].astype(np.float32)
    if order_check:
        bad = np.flatnonzero(ctype != category_type)
        if bad.size:
            raise rec.fail(bad[0], f"clothes_type {ctype[bad[0]]} differs from its category's type "
                                   f"{category_type[bad[0]]}")
    return ctype, landmarks, visibility


def load_annotations(root, strict_count: bool = True) -> Annotations:
    """Read the seven DeepFashion-C annotation files under ``root`` and join them on image name."""
    root = Path(root)
    paths = annotation_paths(root)
    category_names, category_types = read_vocabulary(paths["category_cloth"], strict_count)
    attribute_names, attribute_types = read_vocabulary(paths["attr_cloth"], strict_count)
    for i, t in enumerate(category_types):
        if not 1 <= t <= 3:
            raise _error(paths["category_cloth"], 3 + i, "category_type must be 1..3", category_names[i])
    for i, t in enumerate(attribute_types):
        if not 1 <= t <= 5:
            raise _error(paths["attr_cloth"], 3 + i, "attribute_type must be 1..5", attribute_names[i])

    cat = read_records(paths["category_img"], strict_count)
    names = cat.names
    dup = _duplicates(names)
    if dup is not None:
        raise cat.fail(dup, "image listed twice")
    category = cat.table(1)[:, 0].astype(np.int64)
    _check_range(cat, category, 1, len(category_names), "category label")
    category -= 1

    attr = read_records(paths["attr_img"], strict_count, labels=True)
    attributes = attr.table(len(attribute_names))
    bad = np.flatnonzero((np.abs(attributes) > 1).any(axis=1))
    if bad.size:
        raise attr.fail(bad[0], "attribute labels must be 1, -1 or 0")
    attributes = attributes[_align(names, attr.names, attr.path, cat.path)].astype(np.int8)

    box = read_records(paths["bbox"], strict_count)
    raw_box = box.table(4)
    bad = np.flatnonzero((raw_box[:, 2] < raw_box[:, 0]) | (raw_box[:, 3] < raw_box[:, 1]) | (raw_box.min(1) < 0))
    if bad.size:
        raise box.fail(bad[0], "bounding box must satisfy 0 <= x_1 <= x_2 and 0 <= y_1 <= y_2")
    bbox = raw_box[_align(names, box.names, box.path, cat.path)].astype(np.float32)
    bbox[:, :2] -= 1

    lm = read_records(paths["landmarks"], strict_count)
    order = _align(names, lm.names, lm.path, cat.path)
    ctype, landmarks, visibility = _read_landmarks(lm, category_types[category][np.argsort(order)])

    part_names, status = read_partition(paths["partition"], strict_count)
    split = status[_align(names, part_names, paths["partition"], cat.path)]

    return Annotations(
        root=root, image_names=names, split=split, clothes_type=ctype[order],
        category=category, category_names=category_names, category_types=category_types,
        attributes=attributes, attribute_names=attribute_names, attribute_types=attribute_types,
        bbox=bbox, landmarks=landmarks[order], landmark_visibility=visibility[order],
        files={k: str(p) for k, p in paths.items()},
    )


def _duplicates(names: np.ndarray):
    """Row index of the first repeated name, or None."""
    _, first, counts = np.unique(names, return_index=True, return_counts=True)
    if np.all(counts == 1):
        return None
    repeated = set(np.asarray(names)[first[counts > 1]])
    seen = set()
    for i, n in enumerate(names):
        if n in repeated:
            if n in seen:
                return i
            seen.add(n)
    return None


# ----- writing (the exact inverse of load_annotations) -----------------------------------------------
HEADERS = {
    "category_cloth": "category_name  category_type",
    "category_img": "image_name  category_label",
    "attr_cloth": "attribute_name  attribute_type",
    "attr_img": "image_name  attribute_labels",
    "bbox": "image_name  x_1  y_1  x_2  y_2",
    "landmarks": "image_name  clothes_type  landmark_visibility_1  landmark_location_x_1  landmark_location_y_1"
                 "  ...  landmark_visibility_8  landmark_location_x_8  landmark_location_y_8",
    "partition": "image_name  evaluation_status",
}


def pad_name(name: str) -> str:
    return name.ljust(NAME_COLUMN) if len(name) < NAME_COLUMN else name + " "


def _label_bytes(values: np.ndarray) -> np.ndarray:
    """int8 (N, A) in {-1, 0, 1} -> (N, 3A - 1) bytes laid out as '%2d' values joined by one space."""
    n, a = values.shape
    out = np.full((n, 3 * a), ord(" "), dtype=np.uint8)
    out[:, 0::3] = np.where(values < 0, ord("-"), ord(" "))
    out[:, 1::3] = ord("0") + np.abs(values)
    return out[:, :-1]


def _write(path: Path, header: str, rows) -> None:
    rows = list(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(f"{len(rows)}\n{header}\n".encode())
        f.writelines(row if isinstance(row, bytes) else row.encode() for row in rows)


def write_annotations(root, ann: Annotations) -> None:
    """Write ``ann`` as the seven DeepFashion-C files under ``root``, byte for byte in the real layout.

    Boxes go back to 1-based inclusive integers, categories to 1-based labels and landmarks to the 6/4/8
    triples of each clothes type; row order is that of ``ann``.
    """
    root = Path(root)
    paths = {k: root / v for k, v in ANNOTATION_FILES.items()}
    names = [pad_name(n) for n in ann.image_names]
    _write(paths["category_cloth"], HEADERS["category_cloth"],
           (f"{n.ljust(15)}{t}\n" for n, t in zip(ann.category_names, ann.category_types)))
    _write(paths["attr_cloth"], HEADERS["attr_cloth"],
           (f"{n.ljust(29)}{t}\n" for n, t in zip(ann.attribute_names, ann.attribute_types)))
    _write(paths["category_img"], HEADERS["category_img"],
           (f"{n}{c + 1}\n" for n, c in zip(names, ann.category)))
    labels = _label_bytes(ann.attributes.astype(np.int8))
    _write(paths["attr_img"], HEADERS["attr_img"],
           (n.encode() + labels[i].tobytes() + b"\n" for i, n in enumerate(names)))
    box = np.rint(ann.bbox).astype(np.int64) + np.array([1, 1, 0, 0])
    _write(paths["bbox"], HEADERS["bbox"],
           (f"{n}{b[0]:03d} {b[1]:03d} {b[2]:03d} {b[3]:03d}\n" for n, b in zip(names, box)))
    points = np.rint(ann.landmarks).astype(np.int64)

    def landmark_row(i):
        slots = SLOTS_BY_CLOTHES_TYPE[int(ann.clothes_type[i])]
        triples = "".join(f"  {ann.landmark_visibility[i, s]} {points[i, s, 0]:03d} {points[i, s, 1]:03d}"
                          for s in slots)
        return f"{names[i]}{ann.clothes_type[i]:2d}{triples} \n"

    _write(paths["landmarks"], HEADERS["landmarks"], (landmark_row(i) for i in range(len(names))))
    _write(paths["partition"], HEADERS["partition"], (f"{n}{s}\n" for n, s in zip(names, ann.split)))
