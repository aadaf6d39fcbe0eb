"""Chest X-ray finding classification for medimg: a task plug-in that lives outside medimg's tree.

plugin.py registers the task (gateway-safe), schemas.py holds its options and result, pipeline.py runs it on
the workers, synthetic.py draws the synthetic radiographs its reference model was fitted on.
"""
