"""A Kalman filter box tracker with SORT's state, motion model and noise settings.

State ``(cx, cy, area, aspect, d cx, d cy, d area)``: constant velocity for centre and area, no
velocity for the aspect ratio. Here the "frames" are consecutive axial slices. Unlike SORT, a
tracker has no global id counter: ids are given by the caller, so results never depend on what ran
before.
"""

from __future__ import annotations

import numpy as np

F_MATRIX = np.eye(7)
F_MATRIX[0, 4] = F_MATRIX[1, 5] = F_MATRIX[2, 6] = 1.0
H_MATRIX = np.eye(4, 7)
R_NOISE = np.diag([1.0, 1.0, 10.0, 10.0])
P_INITIAL = np.diag([10.0, 10.0, 10.0, 10.0, 1e4, 1e4, 1e4])
Q_NOISE = np.diag([1.0, 1.0, 1.0, 1.0, 0.01, 0.01, 1e-4])


def box_to_measurement(box_xyxy: np.ndarray) -> np.ndarray:
    x1, y1, x2, y2 = box_xyxy
    w, h = x2 - x1, y2 - y1
    return np.array([x1 + w / 2, y1 + h / 2, w * h, w / max(h, 1e-6)])


def state_to_box(state: np.ndarray) -> np.ndarray:
    cx, cy, area, aspect = state[:4]
    w = np.sqrt(max(area * aspect, 0.0))
    h = area / w if w > 0 else 0.0
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


class KalmanBoxTracker:
    """Tracks one box from slice to slice."""

    def __init__(self, box_xyxy: np.ndarray):
        self.x = np.zeros(7)
        self.x[:4] = box_to_measurement(np.asarray(box_xyxy, dtype=np.float64))
        self.P = P_INITIAL.copy()

    def predict(self) -> np.ndarray:
        """Advance one slice; returns the predicted box."""
        if self.x[2] + self.x[6] <= 0:  # the area would become negative
            self.x[6] = 0.0
        self.x = F_MATRIX @ self.x
        self.P = F_MATRIX @ self.P @ F_MATRIX.T + Q_NOISE
        return state_to_box(self.x)

    def update(self, box_xyxy: np.ndarray) -> None:
        z = box_to_measurement(np.asarray(box_xyxy, dtype=np.float64))
        y = z - H_MATRIX @ self.x
        s = H_MATRIX @ self.P @ H_MATRIX.T + R_NOISE
        k = self.P @ H_MATRIX.T @ np.linalg.inv(s)
        self.x = self.x + k @ y
        self.P = (np.eye(7) - k @ H_MATRIX) @ self.P
