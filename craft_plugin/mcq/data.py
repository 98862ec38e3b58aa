"""MCQ data: a JSONL file, one question a line, validated as a whole before anything is scored.

Line format::

    {"image_path": "images/scene1.png", "question": "What colour is the cube?",
     "choices": ["red", "green", "blue"], "answer_index": 0, "id": "scene1-colour"}

* ``image_path`` — relative paths resolve against ``image_root`` if given, else against the
  JSONL file's folder; absolute paths are used as they are.
* ``question`` — a non-empty string.
* ``choices`` — a list of at least two distinct, non-empty strings.
* ``answer_index`` — an integer (not a bool) indexing ``choices``.
* ``id`` — optional (string or integer); kept in the output. Default: ``"line-<n>"``.

:func:`load_mcq` reads the whole file and reports **every** bad line at once (line number,
field, problem) in one :class:`MCQDataError`; with ``skip_invalid=True`` it returns the valid
questions and the skipped lines instead. Blank lines are ignored. Line numbers are 1-based.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["LineProblem", "MCQData", "MCQDataError", "MCQQuestion", "load_mcq", "load_image"]

logger = logging.getLogger(__name__)

REQUIRED_FIELDS: tuple[str, ...] = ("image_path", "question", "choices", "answer_index")


@dataclass(frozen=True)
class MCQQuestion:
    """One valid question. ``image`` is the resolved, checked image path."""

    id: str
    line: int
    image: Path
    question: str
    choices: tuple[str, ...]
    answer_index: int


@dataclass(frozen=True)
class LineProblem:
    """One problem of one line: ``line`` (1-based), ``field`` (or ``"(line)"``), ``problem``."""

    line: int
    field: str
    problem: str

    def __str__(self) -> str:
        where = "" if self.field == "(line)" else f"field '{self.field}': "
        return f"line {self.line}: {where}{self.problem}"


@dataclass
class MCQData:
    """The questions to score and what was skipped (only with ``skip_invalid``)."""

    path: Path
    questions: list[MCQQuestion]
    total_lines: int  #: non-blank lines in the file
    skipped: list[LineProblem] = field(default_factory=list)  #: problems of the skipped lines

    @property
    def skipped_lines(self) -> list[int]:
        """Sorted line numbers that were skipped."""
        return sorted({p.line for p in self.skipped})


class MCQDataError(ValueError):
    """The MCQ file has invalid lines; ``problems`` lists every one of them."""

    def __init__(self, path: Path, problems: list[LineProblem], total_lines: int) -> None:
        self.path = path
        self.problems = problems
        self.total_lines = total_lines
        bad = sorted({p.line for p in problems})
        if total_lines == 0:
            super().__init__(f"no questions in {path}: the file is empty (or holds only blank lines); one JSON question per line")
            return
        head = f"{path}: {len(bad)} invalid line(s) of {total_lines} (lines {', '.join(map(str, bad))}); "
        if total_lines > len(bad):
            head += f"fix them, or pass --skip-invalid to score the other {total_lines - len(bad)}"
        else:
            head += "no valid question is left to score: fix them"
        super().__init__("\n".join([head, *(f"  - {p}" for p in problems)]))


def _check_image(path: Path) -> str | None:
    """None if ``path`` is a readable image, else what is wrong with it."""
    if not path.exists():
        return f"image not found: {path}"
    if not path.is_file():
        return f"not a file: {path}"
    try:
        from PIL import Image

        with Image.open(path) as im:
            im.verify()
    except Exception as err:  # PIL raises many kinds
        return f"image unreadable: {path} ({type(err).__name__}: {err})"
    return None


def _validate(obj: Any, line: int, base: Path) -> tuple[MCQQuestion | None, list[LineProblem]]:
    problems: list[LineProblem] = []

    def bad(field_name: str, problem: str) -> None:
        problems.append(LineProblem(line, field_name, problem))

    if not isinstance(obj, dict):
        bad("(line)", f"expected a JSON object, got {type(obj).__name__}")
        return None, problems
    for name in REQUIRED_FIELDS:
        if name not in obj:
            bad(name, "missing field")

    question = obj.get("question")
    if "question" in obj and (not isinstance(question, str) or not question.strip()):
        bad("question", "must be a non-empty string")

    choices = obj.get("choices")
    choices_ok = False
    if "choices" in obj:
        if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
            bad("choices", "must be a list of strings")
        elif len(choices) < 2:
            bad("choices", f"fewer than two choices (got {len(choices)})")
        elif any(not c.strip() for c in choices):
            bad("choices", "empty choice")
        elif len(set(choices)) != len(choices):
            dups = sorted({c for c in choices if choices.count(c) > 1})
            bad("choices", f"duplicate choices: {', '.join(repr(d) for d in dups)}")
        else:
            choices_ok = True

    answer = obj.get("answer_index")
    if "answer_index" in obj:
        if not isinstance(answer, int) or isinstance(answer, bool):
            bad("answer_index", f"must be an integer, got {json.dumps(answer)}")
        elif choices_ok and not 0 <= answer < len(choices):
            bad("answer_index", f"out of range: {answer} (choices has {len(choices)}: 0..{len(choices) - 1})")

    image_path = obj.get("image_path")
    image: Path | None = None
    if "image_path" in obj:
        if not isinstance(image_path, str) or not image_path:
            bad("image_path", "must be a non-empty string")
        else:
            image = Path(os.path.expanduser(image_path))
            if not image.is_absolute():
                image = base / image
            trouble = _check_image(image)
            if trouble:
                bad("image_path", trouble)

    qid = obj.get("id", f"line-{line}")
    if not isinstance(qid, (str, int)) or isinstance(qid, bool):
        bad("id", f"must be a string or an integer, got {json.dumps(qid)}")

    if problems:
        return None, problems
    assert image is not None
    return (
        MCQQuestion(
            id=str(qid),
            line=line,
            image=image,
            question=question,
            choices=tuple(choices),
            answer_index=int(answer),
        ),
        [],
    )


def load_mcq(
    path: str | os.PathLike[str],
    *,
    image_root: str | os.PathLike[str] | None = None,
    skip_invalid: bool = False,
    max_samples: int | None = None,
) -> MCQData:
    """Read and validate an MCQ JSONL file (see the module docstring).

    Every line is checked before returning. Any problem raises :class:`MCQDataError` listing all
    of them, unless ``skip_invalid``: then the valid questions are returned and
    ``MCQData.skipped`` holds the problems. ``max_samples`` keeps the first N valid questions
    (all lines are still validated).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MCQ file not found: {path}")
    base = Path(image_root) if image_root is not None else path.resolve().parent
    if image_root is not None and not base.is_dir():
        raise FileNotFoundError(f"--image-root {base} is not a folder")

    questions: list[MCQQuestion] = []
    problems: list[LineProblem] = []
    total = 0
    seen_ids: dict[str, int] = {}
    with path.open("r", encoding="utf-8-sig", errors="replace") as fh:  # -sig: a UTF-8 BOM is not part of line 1
        for number, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            total += 1
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as err:
                problems.append(LineProblem(number, "(line)", f"not JSON ({err.msg} at column {err.colno})"))
                continue
            q, line_problems = _validate(obj, number, base)
            if q is not None and q.id in seen_ids:
                line_problems = [LineProblem(number, "id", f"duplicate id {q.id!r} (first on line {seen_ids[q.id]})")]
                q = None
            problems.extend(line_problems)
            if q is not None:
                seen_ids[q.id] = number
                questions.append(q)
    if total == 0:
        raise MCQDataError(path, [LineProblem(0, "(line)", "the file holds no questions")], 0)
    if problems and not skip_invalid:
        raise MCQDataError(path, problems, total)
    if problems:
        logger.warning("%s: skipping %d invalid line(s)", path, len({p.line for p in problems}))
    if not questions:
        raise MCQDataError(path, problems, total)
    if max_samples is not None:
        if max_samples < 1:
            raise ValueError(f"max_samples must be >= 1, got {max_samples}")
        questions = questions[:max_samples]
    return MCQData(path=path, questions=questions, total_lines=total, skipped=problems)


def load_image(path: Path) -> Any:
    """The image at ``path`` as an RGB ``PIL.Image`` (fully loaded, file closed)."""
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")
