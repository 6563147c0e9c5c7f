"""CUDA sources, their loaders and their CPU references (no torch)."""
