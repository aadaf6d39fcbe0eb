import pytest

from tests.utils.evaluation import aptos_set
from workers.evaluation.base import LabelOptions
from workers.evaluation.files import LabelError
from workers.evaluation.tasks.dr_grading import EVALUATION, read_grades


def test_read_cases_aptos_train_csv(tmp_path) -> None:
    labelled = aptos_set(tmp_path)
    cases = EVALUATION.read_cases(LabelOptions(data=labelled.data, labels=labelled.labels))
    assert {c.case_id: c.truth["grade"] for c in cases} == labelled.truth
    assert all(c.files[0].endswith(".png") for c in cases)


def test_read_grades_unknown_columns_names_both_formats(tmp_path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("filename,grade\na,1\n")
    with pytest.raises(LabelError, match=r"image,level.*id_code,diagnosis"):
        read_grades(path)


def test_read_cases_missing_image_names_it(tmp_path) -> None:
    path = tmp_path / "trainLabels.csv"
    path.write_text("image,level\n10_left,2\n")
    with pytest.raises(LabelError, match="10_left"):
        EVALUATION.read_cases(LabelOptions(data=tmp_path, labels=path))
