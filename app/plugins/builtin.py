"""The four shipped tasks, registered like any outside task: pyproject.toml lists each of these objects in
the `medimg.tasks` entry-point group. Nothing here imports worker code; the strings name it for the workers.
"""

from app.plugins.registry import DicomOutput, TaskPlugin
from app.schemas.options import (
    CovidLesionSegmentationOptions,
    DRGradingOptions,
    LungNoduleDetectionOptions,
    ThyroidMalignancyOptions,
)
from app.schemas.results import (
    CovidLesionSegmentationResult,
    DRGradingResult,
    LungNoduleDetectionResult,
    ThyroidMalignancyResult,
)

SEG_ARTIFACT = "seg.dcm"
SR_ARTIFACT = "sr.dcm"
SALIENCY_ARTIFACT = "saliency.dcm"
_BUILDERS = "workers.dicom_results.builders"
_EVALUATIONS = "workers.evaluation.tasks"
_SHADOW = "workers.evaluation.shadow"

DR_GRADING = TaskPlugin(
    name="dr-grading",
    title="Diabetic retinopathy grade (ICDR) from a colour fundus photograph",
    options=DRGradingOptions,
    result=DRGradingResult,
    pipeline="workers.pipelines.dr_grading:DRGradingPipeline",
    dicom_outputs=(DicomOutput(SR_ARTIFACT, f"{_BUILDERS}:dr_grading_sr_of_job"),
                   DicomOutput(SALIENCY_ARTIFACT, f"{_BUILDERS}:saliency_sc_of_job")),
    quality_gate="workers.quality.fundus:check_fundus",
    evaluation=f"{_EVALUATIONS}.dr_grading:EVALUATION",
    shadow_agreement=f"{_SHADOW}:dr_agreement",
)

LUNG_NODULE_DETECTION = TaskPlugin(
    name="lung-nodule-detection",
    title="Pulmonary nodules in a chest CT series",
    options=LungNoduleDetectionOptions,
    result=LungNoduleDetectionResult,
    pipeline="workers.pipelines.lung_nodule_detection:LungNoduleDetectionPipeline",
    dicom_outputs=(DicomOutput(SR_ARTIFACT, f"{_BUILDERS}:lung_nodule_sr_of_job"),),
    quality_gate="workers.quality.ct:check_ct",
    evaluation=f"{_EVALUATIONS}.lung_nodule_detection:EVALUATION",
    shadow_agreement=f"{_SHADOW}:nodule_agreement",
)

COVID_LESION_SEGMENTATION = TaskPlugin(
    name="covid-lesion-segmentation",
    title="COVID-19 pneumonia lesions (ground-glass, consolidation) in a chest CT series",
    options=CovidLesionSegmentationOptions,
    result=CovidLesionSegmentationResult,
    pipeline="workers.pipelines.covid_lesion_segmentation:CovidLesionSegmentationPipeline",
    dicom_outputs=(DicomOutput(SEG_ARTIFACT, f"{_BUILDERS}:covid_lesion_seg_of_job"),),
    quality_gate="workers.quality.ct:check_ct",
    evaluation=f"{_EVALUATIONS}.covid_lesion_segmentation:EVALUATION",
    shadow_agreement=f"{_SHADOW}:covid_agreement",
)

THYROID_MALIGNANCY = TaskPlugin(
    name="thyroid-malignancy",
    title="Malignancy of a thyroid nodule on a B-mode ultrasound frame, with its ACR TI-RADS band",
    options=ThyroidMalignancyOptions,
    result=ThyroidMalignancyResult,
    pipeline="workers.pipelines.thyroid_malignancy:ThyroidMalignancyPipeline",
    dicom_outputs=(
        DicomOutput(SEG_ARTIFACT, f"{_BUILDERS}:thyroid_nodule_seg_of_job"),
        DicomOutput(SR_ARTIFACT, f"{_BUILDERS}:thyroid_malignancy_sr_of_job"),
        DicomOutput(SALIENCY_ARTIFACT, f"{_BUILDERS}:saliency_sc_of_job"),
    ),
    quality_gate="workers.quality.ultrasound:check_frame",
    evaluation=f"{_EVALUATIONS}.thyroid_malignancy:EVALUATION",
    shadow_agreement=f"{_SHADOW}:thyroid_agreement",
)
