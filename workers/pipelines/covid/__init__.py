"""The COVID lesion pipeline's parts: classes and segments, slice-wise inference, decoding, figures
(with lung-zone statistics) and artifact writers. `workers.pipelines.covid_lesion_segmentation` composes them."""
