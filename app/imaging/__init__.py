"""Imaging code both sides share: the gateway checks inputs with it at intake, workers build volumes with it.

Header-only and light (pydicom, numpy): no ONNX Runtime, no pixel decoding.
"""
