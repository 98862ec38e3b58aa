"""The generated MCQ set: deterministic, valid, balanced."""

from __future__ import annotations

import collections
import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image

from craft_plugin.mcq.data import load_mcq
from craft_plugin.mcq.scenes import COLORS, make_scene_mcq


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            h.update(f.relative_to(folder).as_posix().encode() + f.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path):
    a = make_scene_mcq(tmp_path / "a", 12, seed=5, image_size=24)
    b = make_scene_mcq(tmp_path / "b", 12, seed=5, image_size=24)
    c = make_scene_mcq(tmp_path / "c", 12, seed=6, image_size=24)
    assert _digest(a.parent) == _digest(b.parent) != _digest(c.parent)


def test_valid_balanced_and_images_match_answers(tmp_path: Path):
    path = make_scene_mcq(tmp_path, 24, seed=0)
    data = load_mcq(path)
    assert len(data.questions) == 24
    records = [json.loads(line) for line in path.read_text().splitlines()]
    kinds = collections.Counter(r["kind"] for r in records)
    assert kinds == {"color": 8, "count": 8, "position": 8}
    for kind in kinds:
        rs = [r for r in records if r["kind"] == kind]
        assert collections.Counter(r["answer_index"] for r in rs) == {0: 2, 1: 2, 2: 2, 3: 2}
        assert collections.Counter(r["choices"][r["answer_index"]] for r in rs) == collections.Counter(
            {a: 2 for a in rs[0]["choices"]}
        )
    for r, q in zip(records, data.questions):
        img = np.asarray(Image.open(q.image)).astype(int)
        assert img.shape == (32, 32, 3)
        answer = r["choices"][r["answer_index"]]
        if r["kind"] == "color":  # the most saturated pixels are the shape's colour
            sat = img.max(axis=2) - img.min(axis=2)
            mean = img[sat > 80].mean(axis=0)
            nearest = min(COLORS, key=lambda c: np.abs(np.asarray(COLORS[c]) - mean).sum())
            assert nearest == answer
        if r["kind"] == "position":
            sat = img.max(axis=2) - img.min(axis=2)
            ys, xs = np.nonzero(sat > 80)
            where = ("top" if ys.mean() < 16 else "bottom") + " " + ("left" if xs.mean() < 16 else "right")
            assert where == answer
