"""One pipeline per task: load → preprocess → infer → decode → outputs."""

from app.schemas.tasks import TaskName
from workers.pipelines.base import Pipeline
from workers.pipelines.covid_lesion_segmentation import CovidLesionSegmentationPipeline
from workers.pipelines.dr_grading import DRGradingPipeline
from workers.pipelines.lung_nodule_detection import LungNoduleDetectionPipeline
from workers.pipelines.thyroid_malignancy import ThyroidMalignancyPipeline

PIPELINES: dict[TaskName, Pipeline] = {
    TaskName.DR_GRADING: DRGradingPipeline(),
    TaskName.LUNG_NODULE_DETECTION: LungNoduleDetectionPipeline(),
    TaskName.THYROID_MALIGNANCY: ThyroidMalignancyPipeline(),
    TaskName.COVID_LESION_SEGMENTATION: CovidLesionSegmentationPipeline(),
}
