"""Checkpoint -> ONNX -> TensorRT engine."""
