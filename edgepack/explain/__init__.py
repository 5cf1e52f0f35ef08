"""Explain a compressed model: per-layer int8 error, selective float layers, on-device memory.

layers.py    per-layer error of an int8 file against its float source (TFLite and ONNX, one row format)
memory.py    weight bytes, peak activation bytes from execution order and tensor lifetimes, peak RSS
             (TensorFlow-free)
selective.py keep named layers in float (`keep_float`) and the automatic mode (`--auto --max-drop`)
"""
