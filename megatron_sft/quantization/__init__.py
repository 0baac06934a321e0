"""Quantization with nvidia-modelopt: calibration (post-training quantization) and the quantized export.

The fake-quantized model itself needs nothing from here to train (QAT) or generate: the checkpoint carries the
modelopt state and `loading` restores it (checkpointing/modelopt_state.py)."""
