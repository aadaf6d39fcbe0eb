"""`medimg eval`: a site's labelled cases through the service's own pipeline, scored with 95 % intervals.

Worker-side (it runs the ONNX pipelines); the CLI imports it lazily. Per-task pieces (label readers, figures)
live in `workers.evaluation.tasks`, one module per task, found through the task's registration
(`TaskPlugin.evaluation`).
"""
