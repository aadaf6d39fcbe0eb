"""Intake at the door: stage uploads on disk, detect formats from content, check inputs against the model."""
