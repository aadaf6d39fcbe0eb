"""The skeleton of the reference models' evaluate.py and train.py: manifest edits, card blocks, the drift report."""

import json
import shutil

import pytest

from app.model_repository import ModelRepositoryError
from app.schemas.manifest import ModelManifest
from devkit.reference_models import reference_model_dir
from workers.evaluation.model_scripts import (
    ManifestLayoutError,
    ModelFolder,
    differences,
    edited_manifest,
    replace_block,
    report_drift,
    write_card_block,
    write_new_manifest,
)

BEGIN, END = "<!-- metrics:begin (written by evaluate.py --write) -->", "<!-- metrics:end -->"


@pytest.fixture(params=["dr-grading-reference", "thyroid-malignancy-reference"])
def stored(request, tmp_path):
    """A copy of a committed version folder (its manifest escapes non-ASCII text; the DR card has its block)."""
    folder = tmp_path / request.param
    shutil.copytree(reference_model_dir(request.param) / "1", folder / "1",
                    ignore=shutil.ignore_patterns("*.onnx"))
    return ModelFolder(folder)


def test_an_edit_changes_the_edited_key_and_keeps_every_other_byte(stored) -> None:
    before = stored.manifest_path.read_text()
    with edited_manifest(stored.manifest_path) as raw:
        raw["metrics"]["added_figure"] = 0.125
    after = stored.manifest_path.read_text()
    assert after != before
    # The only difference is the one entry added at the end of the metrics object.
    last = list(json.loads(before)["metrics"].items())[-1]
    tail = f'"{last[0]}": {json.dumps(last[1])}'
    assert after.replace(f'{tail},\n    "added_figure": 0.125', tail) == before
    assert "\\u" in after and after.isascii()  # escaped as stored, not written out as UTF-8


def test_an_edit_that_changes_nothing_writes_the_same_bytes(stored) -> None:
    before = stored.manifest_path.read_bytes()
    with edited_manifest(stored.manifest_path):
        pass
    assert stored.manifest_path.read_bytes() == before


def test_an_edit_keeps_a_compact_manifest_compact(tmp_path, stored) -> None:
    document = json.loads(stored.manifest_path.read_text())
    compact = tmp_path / "compact.json"
    compact.write_text(json.dumps(document, ensure_ascii=False))
    with edited_manifest(compact) as raw:
        raw["metrics"]["added_figure"] = 0.5
    document["metrics"]["added_figure"] = 0.5
    assert compact.read_text() == json.dumps(document, ensure_ascii=False)


def test_an_edit_that_breaks_the_schema_is_not_written(stored) -> None:
    before = stored.manifest_path.read_bytes()
    with pytest.raises(ValueError), edited_manifest(stored.manifest_path) as raw:
        raw["metrics"]["auc"] = "high"
    assert stored.manifest_path.read_bytes() == before


def test_a_hand_formatted_manifest_is_refused_rather_than_reformatted(stored) -> None:
    text = stored.manifest_path.read_text().replace('\n  "version"', '\n    "version"', 1)
    stored.manifest_path.write_text(text)
    with pytest.raises(ManifestLayoutError, match="manifest.json"), edited_manifest(stored.manifest_path):
        pass
    assert stored.manifest_path.read_text() == text


def test_a_new_manifest_holds_the_fields_set_in_the_stored_layout(stored, tmp_path) -> None:
    """What train.py writes: the stored manifest parsed and written anew comes out byte for byte."""
    fresh = tmp_path / "fresh.json"
    write_new_manifest(fresh, ModelManifest.model_validate_json(stored.manifest_path.read_text()))
    assert fresh.read_bytes() == stored.manifest_path.read_bytes()


def test_the_card_block_is_replaced_and_the_rest_kept() -> None:
    card = f"# m\n\nprose\n{BEGIN}\n| old | 1 |\n{END}\n\n## Limits\n{END}\n"
    block = f"{BEGIN}\n| new | 2 |\n{END}"
    assert replace_block(card, BEGIN, END, block) == f"# m\n\nprose\n{block}\n\n## Limits\n{END}\n"
    with pytest.raises(ValueError, match="must run from"):
        replace_block(card, BEGIN, END, "| new | 2 |")
    with pytest.raises(ValueError, match="no block"):
        replace_block("# m\n", BEGIN, END, block)


def test_the_committed_card_block_written_again_is_the_same_card(stored) -> None:
    card = stored.card_path.read_text()
    if BEGIN not in card:
        pytest.skip("this card's metrics block has other markers")
    block = card[card.index(BEGIN):card.index(END) + len(END)]
    write_card_block(stored.card_path, BEGIN, END, block)
    assert stored.card_path.read_text() == card
    with pytest.raises(ValueError, match="CARD.md"):
        write_card_block(stored.card_path, "<!-- other:begin -->", END, f"<!-- other:begin -->{END}")


def test_differences_name_the_moved_and_missing_figures_with_their_tolerance() -> None:
    stored = {"auc": 0.91, "kappa": 0.8, "n": 500.0}
    measured = {"auc": 0.9312, "kappa": 0.81, "n": 500.0, "sensitivity": 0.85}
    tolerance = {"auc": 0.02, "kappa": 0.02, "n": 0.0, "sensitivity": 0.02}
    assert differences(stored, measured, tolerance.get) == [
        "auc: manifest 0.91, measured 0.9312 (+0.0212, tolerance 0.02)",
        "sensitivity: measured 0.8500, not in the manifest",
    ]
    assert differences(stored, {"auc": 0.93}, 0.02) == []  # at the tolerance, within float rounding
    assert differences(stored, {"n": 499.0}, 0.0) == ["n: manifest 500.0, measured 499.0 (-1.0000, tolerance 0.0)"]


def test_the_drift_report_lists_each_difference_and_sets_the_exit_status(capsys, tmp_path) -> None:
    path = tmp_path / "manifest.json"
    assert report_drift(["auc: manifest 0.91, measured 0.9312"], path) == 1
    err = capsys.readouterr().err
    assert err == f"DRIFT: 1 figure(s) differ from {path}:\n  auc: manifest 0.91, measured 0.9312\n"
    assert report_drift([], path) == 0
    assert "no drift" in capsys.readouterr().err


def test_the_checked_manifest_refuses_a_model_file_that_is_not_the_manifests(stored) -> None:
    stored.onnx_path.write_bytes(b"not the model")
    assert stored.manifest().id == stored.model_id
    with pytest.raises(ModelRepositoryError):
        stored.checked_manifest()
