"""Dense optical flow between consecutive frames with OpenCV's DIS (Kroeger et al., ECCV 2016)."""

from __future__ import annotations

import cv2
import numpy as np

FLOW_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


def _dis(preset: str) -> cv2.DISOpticalFlow:
    if preset not in FLOW_PRESETS:
        raise ValueError(f"unknown flow preset {preset!r} (known: {', '.join(FLOW_PRESETS)})")
    return cv2.DISOpticalFlow_create(FLOW_PRESETS[preset])


def _gray(frame: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)


def dis_flow(first: np.ndarray, second: np.ndarray, preset: str = "fast") -> np.ndarray:
    """Flow (H, W, 2) float32 (dx, dy) such that pixel p of ``first`` moves to p + flow[p] in ``second``."""
    return _dis(preset).calc(_gray(first), _gray(second), None)


def forward_flows(frames: np.ndarray, preset: str = "fast") -> np.ndarray:
    """Flow from each frame to the next: (T-1, H, W, 2) float32 for (T, H, W, 3) uint8 RGB frames."""
    dis = _dis(preset)
    grays = [_gray(frame) for frame in frames]
    flows = np.empty((max(len(frames) - 1, 0), *frames.shape[1:3], 2), dtype=np.float32)
    for t in range(len(frames) - 1):
        flows[t] = dis.calc(grays[t], grays[t + 1], None)
    return flows
