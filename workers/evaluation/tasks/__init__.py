"""Each task's evaluation (label reader, figures, plots), by task: one module per task, easy to move into
the task's plug-in."""

from app.schemas.tasks import TaskName
from workers.evaluation.base import TaskEvaluation
from workers.evaluation.tasks import covid_lesion_segmentation, dr_grading, lung_nodule_detection, thyroid_malignancy

EVALUATIONS: dict[TaskName, TaskEvaluation] = {
    TaskName.DR_GRADING: dr_grading.EVALUATION,
    TaskName.LUNG_NODULE_DETECTION: lung_nodule_detection.EVALUATION,
    TaskName.COVID_LESION_SEGMENTATION: covid_lesion_segmentation.EVALUATION,
    TaskName.THYROID_MALIGNANCY: thyroid_malignancy.EVALUATION,
}
