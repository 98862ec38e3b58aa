"""A generated MCQ set: small rendered scenes and questions about colours, counts and positions.

``make_scene_mcq(folder, n, seed)`` draws ``n`` scenes with numpy, saves them as PNG files under
``folder/images/`` and writes ``folder/mcq.jsonl`` in the format :mod:`craft_plugin.mcq.data`
reads. Everything depends only on the arguments: the same call writes byte-identical files.

Question kinds (each has exactly four choices):

* ``color``    — one shape (square or circle) in one of four colours:
  "What color is the square?" → red / green / blue / yellow;
* ``count``    — one to four squares of one colour on a grid: "How many squares are there?"
  → one / two / three / four;
* ``position`` — one shape in one quadrant: "Where is the circle?"
  → top left / top right / bottom left / bottom right.

Kinds alternate (question ``i`` is of kind ``kinds[i % len(kinds)]``). Within a kind, every
block of four questions uses each answer value once and puts the correct answer once at each
index, so a model that always picks the same value or the same index scores exactly chance
(25%) on a multiple of ``4 * len(kinds)`` questions. Backgrounds and colours are slightly
jittered so the images are not all identical pixels.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["COLORS", "KINDS", "make_scene_mcq", "render_scene"]

KINDS: tuple[str, ...] = ("color", "count", "position")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 170, 60),
    "blue": (45, 75, 215),
    "yellow": (230, 205, 40),
}
_COUNT_WORDS = ("one", "two", "three", "four")
_QUADRANTS = ("top left", "top right", "bottom left", "bottom right")
_SHAPES = ("square", "circle")
JSONL_NAME = "mcq.jsonl"


def _canvas(rng: np.random.Generator, size: int) -> np.ndarray:
    base = rng.integers(90, 140)
    img = np.full((size, size, 3), base, dtype=np.int16)
    img += rng.integers(-6, 7, size=(size, size, 1), dtype=np.int16)
    return img


def _draw(img: np.ndarray, shape: str, cx: float, cy: float, half: float, color: tuple[int, int, int], rng: np.random.Generator) -> None:
    size = img.shape[0]
    yy, xx = np.mgrid[0:size, 0:size]
    if shape == "square":
        mask = (np.abs(xx + 0.5 - cx) <= half) & (np.abs(yy + 0.5 - cy) <= half)
    else:
        mask = (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= half**2
    jitter = rng.integers(-12, 13, size=3)
    img[mask] = np.clip(np.asarray(color) + jitter, 0, 255)


def render_scene(kind: str, value: int, rng: np.random.Generator, image_size: int) -> tuple[np.ndarray, str, list[str]]:
    """``(image uint8 [H, W, 3], question, the four answer strings)``; ``value`` picks the right one."""
    if kind not in KINDS:
        raise ValueError(f"unknown question kind {kind!r}; expected one of {KINDS}")
    s = image_size
    img = _canvas(rng, s)
    if kind == "color":
        names = list(COLORS)
        shape = _SHAPES[int(rng.integers(len(_SHAPES)))]
        half = s * rng.uniform(0.18, 0.26)
        cx, cy = rng.uniform(half + 1, s - half - 1, size=2)
        _draw(img, shape, cx, cy, half, COLORS[names[value]], rng)
        return img.astype(np.uint8), f"What color is the {shape}?", names
    if kind == "count":
        color = list(COLORS.values())[int(rng.integers(len(COLORS)))]
        cells = rng.permutation(9)[: value + 1]
        cell = s / 3
        for c in cells:
            cy, cx = (c // 3 + 0.5) * cell, (c % 3 + 0.5) * cell
            _draw(img, "square", cx, cy, cell * 0.3, color, rng)
        return img.astype(np.uint8), "How many squares are there?", list(_COUNT_WORDS)
    shape = _SHAPES[int(rng.integers(len(_SHAPES)))]
    color = list(COLORS.values())[int(rng.integers(len(COLORS)))]
    half = s * 0.14
    row, col = divmod(value, 2)
    cx = (col + rng.uniform(0.3, 0.7)) * s / 2
    cy = (row + rng.uniform(0.3, 0.7)) * s / 2
    _draw(img, shape, cx, cy, half, color, rng)
    return img.astype(np.uint8), f"Where is the {shape}?", list(_QUADRANTS)


def make_scene_mcq(
    folder: str | os.PathLike[str],
    n: int,
    seed: int = 0,
    image_size: int = 32,
    kinds: tuple[str, ...] | list[str] = KINDS,
) -> Path:
    """Write ``n`` generated questions (PNG scenes + ``mcq.jsonl``) into ``folder``; return the JSONL path.

    Deterministic in ``(n, seed, image_size, kinds)``. Images are ``images/scene_<i>.png``
    (``image_size`` square, RGB); JSONL lines carry ``id``, ``image_path`` (relative),
    ``question``, ``choices``, ``answer_index`` and ``kind``. The JSONL is written to a temp
    name and renamed, so a reader never sees half of it.
    """
    from PIL import Image

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16 pixels, got {image_size}")
    kinds = tuple(kinds)
    unknown = [k for k in kinds if k not in KINDS]
    if not kinds or unknown:
        raise ValueError(f"kinds must be a non-empty subset of {KINDS}; got {kinds}")
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    per_kind: dict[str, int] = {k: 0 for k in kinds}
    blocks: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    lines: list[str] = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        j = per_kind[kind]
        per_kind[kind] += 1
        if j % 4 == 0:  # a new block: each value once, the answer once at each index
            blocks[kind] = (rng.permutation(4), rng.permutation(4))
        values, slots = blocks[kind]
        value, slot = int(values[j % 4]), int(slots[j % 4])
        img, question, answers = render_scene(kind, value, rng, image_size)
        others = [a for k, a in enumerate(answers) if k != value]
        others = [others[k] for k in rng.permutation(len(others))]
        choices = others[:slot] + [answers[value]] + others[slot:]
        rel = f"images/scene_{i:05d}.png"
        Image.fromarray(img).save(folder / rel, format="PNG")
        record: dict[str, Any] = {
            "id": f"scene-{i:05d}",
            "image_path": rel,
            "question": question,
            "choices": choices,
            "answer_index": slot,
            "kind": kind,
        }
        lines.append(json.dumps(record))
    out = folder / JSONL_NAME
    tmp = folder / f".{JSONL_NAME}.tmp-{os.getpid()}"
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(out)
    return out
