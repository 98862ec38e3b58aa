"""JSONL loading: every bad line reported at once, --skip-invalid scores the rest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from craft_plugin.mcq.data import MCQDataError, load_mcq
from craft_plugin.mcq.scenes import make_scene_mcq


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def _good(i: int, image: str = "images/scene_00000.png") -> str:
    return json.dumps({"id": f"q{i}", "image_path": image, "question": f"Q{i}?", "choices": ["a", "b", "c"], "answer_index": i % 3})


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    make_scene_mcq(tmp_path, 2, seed=0)
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    return tmp_path


def test_five_different_bad_lines_one_message(folder: Path):
    lines = [
        _good(0),                                                         # 1 ok
        '{"image_path": "images/scene_00000.png", "question": "x"',       # 2 not JSON
        json.dumps({"image_path": "images/scene_00000.png", "question": "Q", "choices": ["a", "b"]}),  # 3 missing answer_index
        json.dumps({"image_path": "images/scene_00000.png", "question": "Q", "choices": ["a"], "answer_index": 0}),  # 4 < 2 choices
        _good(4),                                                         # 5 ok
        json.dumps({"image_path": "images/scene_00000.png", "question": "Q", "choices": ["a", "b", "a"], "answer_index": 0}),  # 6 duplicate
        json.dumps({"image_path": "images/scene_00000.png", "question": "Q", "choices": ["a", "b"], "answer_index": 2}),  # 7 out of range
        json.dumps({"image_path": "images/missing.png", "question": "Q", "choices": ["a", "b"], "answer_index": 0}),  # 8 image missing
        json.dumps({"image_path": "broken.png", "question": "Q", "choices": ["a", "b"], "answer_index": 0}),  # 9 unreadable
        "",                                                               # blank: ignored
        _good(10),                                                        # 11 ok
    ]
    path = _write(folder / "bad.jsonl", lines)
    with pytest.raises(MCQDataError) as info:
        load_mcq(path)
    msg = str(info.value)
    assert "7 invalid line(s) of 10 (lines 2, 3, 4, 6, 7, 8, 9)" in msg
    assert "--skip-invalid" in msg and "score the other 3" in msg
    for expected in [
        "line 2: not JSON",
        "line 3: field 'answer_index': missing field",
        "line 4: field 'choices': fewer than two choices (got 1)",
        "line 6: field 'choices': duplicate choices: 'a'",
        "line 7: field 'answer_index': out of range: 2 (choices has 2: 0..1)",
        "line 8: field 'image_path': image not found:",
        "line 9: field 'image_path': image unreadable:",
    ]:
        assert expected in msg, expected
    assert sorted({p.line for p in info.value.problems}) == [2, 3, 4, 6, 7, 8, 9]

    data = load_mcq(path, skip_invalid=True)
    assert [q.id for q in data.questions] == ["q0", "q4", "q10"]
    assert [q.line for q in data.questions] == [1, 5, 11]
    assert data.skipped_lines == [2, 3, 4, 6, 7, 8, 9]
    assert data.total_lines == 10


def test_image_root_and_defaults(folder: Path, tmp_path_factory: pytest.TempPathFactory):
    elsewhere = tmp_path_factory.mktemp("jsonl")
    line = json.dumps({"image_path": "images/scene_00001.png", "question": "Q?", "choices": ["x", "y"], "answer_index": 1})
    path = _write(elsewhere / "q.jsonl", [line])
    with pytest.raises(MCQDataError, match="image not found"):
        load_mcq(path)  # relative to the JSONL's folder: not there
    data = load_mcq(path, image_root=folder)
    q = data.questions[0]
    assert q.image == folder / "images/scene_00001.png"
    assert q.id == "line-1" and q.choices == ("x", "y") and q.answer_index == 1


def test_type_errors_and_bool_answer(folder: Path):
    lines = [
        json.dumps([1, 2]),
        json.dumps({"image_path": "images/scene_00000.png", "question": "", "choices": "ab", "answer_index": True}),
    ]
    with pytest.raises(MCQDataError) as info:
        load_mcq(_write(folder / "t.jsonl", lines))
    msg = str(info.value)
    assert "line 1: expected a JSON object, got list" in msg
    assert "line 2: field 'question': must be a non-empty string" in msg
    assert "line 2: field 'choices': must be a list of strings" in msg
    assert "line 2: field 'answer_index': must be an integer, got true" in msg


def test_max_samples_and_missing_file(folder: Path):
    path = _write(folder / "ok.jsonl", [_good(i) for i in range(5)])
    assert [q.id for q in load_mcq(path, max_samples=2).questions] == ["q0", "q1"]
    with pytest.raises(FileNotFoundError, match="MCQ file not found"):
        load_mcq(folder / "nope.jsonl")


def test_a_utf8_bom_is_not_part_of_line_1(folder: Path):
    path = folder / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + ("\n".join([_good(0), _good(1)]) + "\n").encode("utf-8"))
    data = load_mcq(path)
    assert [q.id for q in data.questions] == ["q0", "q1"] and data.skipped == []


@pytest.mark.parametrize("content", ["", "\n\n  \n", "\ufeff"])
def test_an_empty_file_says_no_questions(folder: Path, content: str):
    path = folder / "empty.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(MCQDataError) as err:
        load_mcq(path)
    assert str(err.value).startswith(f"no questions in {path}")
    rest = str(err.value).replace(str(path), "FILE")  # the tmp path itself may hold "-1" (pytest-13)
    assert "-1" not in rest and "invalid line" not in rest
