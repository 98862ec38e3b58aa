"""`craft eval-mcq` end to end on saved tiny checkpoints (Typer's CliRunner, in process)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from craft_plugin.cli import app

runner = CliRunner()


def _run(*args: str):
    result = runner.invoke(app, ["eval-mcq", *args])
    return result


def test_same_checkpoint_twice_differs_by_nothing(tmp_path: Path, smolvla_ckpt: Path, scene_set: Path):
    out = tmp_path / "results.json"
    r = _run("--policy.path", str(smolvla_ckpt), "--compare", str(smolvla_ckpt), "--data", str(scene_set), "--output", str(out), "--seed", "3")
    assert r.exit_code == 0, r.output
    text = r.output
    assert re.search(r"\[A\] .*\(smolvla, ", text) and re.search(r"\[B\] ", text)
    assert len(re.findall(r"Accuracy: \d\.\d{4}", text)) == 2
    assert len(re.findall(r"Avg Margin: -?\d+\.\d{4}", text)) >= 2
    assert len(re.findall(r"Correct: \d+/12", text)) == 2
    assert "Difference (B - A):" in text
    assert "Accuracy: +0.0000  (95% paired bootstrap CI +0.0000 to +0.0000)" in text
    assert "Avg Margin: +0.0000" in text
    assert "McNemar exact p = 1  (only A right: 0, only B right: 0)" in text

    report = json.loads(out.read_text())
    assert not list(tmp_path.glob(".*tmp*"))  # no temp file left behind
    assert report["settings"]["scoring"] == "shared-prefix" and report["settings"]["seed"] == 3
    assert report["data"] == {"file": str(scene_set), "lines": 12, "scored": 12, "skipped": 0, "skipped_lines": [], "problems": []}
    c = report["comparison"]
    assert (c["accuracy_diff"], c["avg_margin_diff"], c["mcnemar_p"], c["a_only"], c["b_only"]) == (0.0, 0.0, 1.0, 0, 0)
    a, b = report["checkpoints"]["A"], report["checkpoints"]["B"]
    assert a["metrics"] == b["metrics"] and a["family"] == "smolvla" and a["path"] == str(smolvla_ckpt)
    assert len(report["questions"]) == 12
    q0 = report["questions"][0]
    assert q0["id"] == "scene-00000" and q0["line"] == 1
    assert len(q0["A"]["scores"]) == len(q0["choices"]) == 4 and q0["A"]["scores"] == q0["B"]["scores"]
    assert q0["A"]["prediction"] == max(range(4), key=lambda i: q0["A"]["scores"][i])
    k = sum(q["A"]["correct"] for q in report["questions"])
    assert f"Correct: {k}/12" in text


def test_naive_flag_and_hf_folder_give_the_same_numbers(tmp_path: Path, hf_dir: Path, scene_set: Path):
    shared, naive = tmp_path / "s.json", tmp_path / "n.json"
    assert _run("--policy.path", str(hf_dir), "--data", str(scene_set), "--output", str(shared), "--max-samples", "6").exit_code == 0
    r = _run("--policy.path", str(hf_dir), "--data", str(scene_set), "--output", str(naive), "--max-samples", "6", "--naive", "--normalize", "length", "--batch-size", "2")
    assert r.exit_code == 0, r.output
    assert "(naive scoring, normalize=length)" in r.output
    s, n = json.loads(shared.read_text()), json.loads(naive.read_text())
    assert s["data"]["scored"] == n["data"]["scored"] == 6
    for qs, qn in zip(s["questions"], n["questions"]):
        assert qs["A"]["scores"] == pytest.approx(qn["A"]["scores"], abs=1e-4)
    assert n["checkpoints"]["A"]["metrics"]["normalize"] == "length"


def test_five_bad_lines_then_skip_invalid(tmp_path: Path, smolvla_ckpt: Path, scene_set: Path):
    shutil.copytree(scene_set.parent / "images", tmp_path / "images")
    good = scene_set.read_text().splitlines()[:6]
    bad = [
        "{not json",
        json.dumps({"image_path": "images/scene_00000.png", "choices": ["a", "b"], "answer_index": 0}),
        json.dumps({"image_path": "images/scene_00000.png", "question": "Q", "choices": ["a"], "answer_index": 0}),
        json.dumps({"image_path": "images/scene_00000.png", "question": "Q", "choices": ["a", "b"], "answer_index": 5}),
        json.dumps({"image_path": "images/nowhere.png", "question": "Q", "choices": ["a", "b"], "answer_index": 0}),
    ]
    lines = [good[0], bad[0], good[1], bad[1], bad[2], good[2], good[3], bad[3], good[4], bad[4], good[5]]
    data = tmp_path / "mixed.jsonl"
    data.write_text("\n".join(lines) + "\n")

    r = _run("--policy.path", str(smolvla_ckpt), "--data", str(data))
    assert r.exit_code == 2
    assert "5 invalid line(s) of 11 (lines 2, 4, 5, 8, 10)" in r.output
    for n in (2, 4, 5, 8, 10):
        assert f"line {n}:" in r.output
    assert "Accuracy" not in r.output  # nothing scored

    out = tmp_path / "r.json"
    r = _run("--policy.path", str(smolvla_ckpt), "--data", str(data), "--skip-invalid", "--output", str(out))
    assert r.exit_code == 0, r.output
    assert "skipped 5 invalid line(s): 2, 4, 5, 8, 10" in r.output
    assert "Correct: " in r.output and "/6" in r.output
    report = json.loads(out.read_text())
    assert report["data"]["skipped"] == 5 and report["data"]["skipped_lines"] == [2, 4, 5, 8, 10]
    assert [q["line"] for q in report["questions"]] == [1, 3, 6, 7, 9, 11]


def test_bad_options_are_refused(smolvla_ckpt: Path, scene_set: Path, tmp_path: Path):
    r = _run("--policy.path", str(smolvla_ckpt), "--data", str(scene_set), "--normalize", "bytes")
    assert r.exit_code == 2 and "none, length" in r.output
    r = _run("--policy.path", str(tmp_path / "missing"), "--data", str(scene_set))
    assert r.exit_code == 2 and "neither a local folder nor a downloadable hub repo" in r.output


def test_compare_across_model_families_warns_about_tokenizations(hf_dir: Path, smolvla_ckpt: Path, scene_set: Path, tmp_path: Path):
    out = tmp_path / "r.json"
    r = _run("--policy.path", str(hf_dir), "--compare", str(smolvla_ckpt), "--data", str(scene_set), "--max-samples", "2", "--output", str(out))
    assert r.exit_code == 0, r.output
    assert "A is a hf model and B a smolvla model" in r.output and "compares different tokenizations" in r.output
    assert json.loads(out.read_text())["warnings"][0].startswith("--compare: A is a hf model and B a smolvla model")
    same = _run("--policy.path", str(smolvla_ckpt), "--compare", str(smolvla_ckpt), "--data", str(scene_set), "--max-samples", "2")
    assert same.exit_code == 0 and "tokenizations" not in same.output


def test_a_plain_hf_paligemma_folder_scores_as_its_naive_reference(paligemma_hf_dir: Path, scene_set: Path, tmp_path: Path):
    """PaliGemmaForConditionalGeneration (pi0's backbone) as a plain HF folder: its processor's
    `labels` are dropped and the choices are its causal suffix (token_type_ids 1)."""
    shared, naive = tmp_path / "s.json", tmp_path / "n.json"
    r = _run("--policy.path", str(paligemma_hf_dir), "--data", str(scene_set), "--max-samples", "4", "--output", str(shared))
    assert r.exit_code == 0, r.output
    r = _run("--policy.path", str(paligemma_hf_dir), "--data", str(scene_set), "--max-samples", "4", "--output", str(naive), "--naive")
    assert r.exit_code == 0, r.output
    s, n = json.loads(shared.read_text()), json.loads(naive.read_text())
    assert s["checkpoints"]["A"]["family"] == "hf" and len(s["questions"]) == 4
    for qs, qn in zip(s["questions"], n["questions"], strict=True):
        assert qs["A"]["scores"] == pytest.approx(qn["A"]["scores"], abs=1e-4)
        assert all(x < 0 for x in qs["A"]["scores"])
