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


def boxes_to_measurements(boxes_xyxy: np.ndarray) -> np.ndarray:
    """(N, 4) boxes -> (N, 4) measurements ``(cx, cy, area, aspect)``."""
    b = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    return np.stack([b[:, 0] + w / 2, b[:, 1] + h / 2, w * h, w / np.maximum(h, 1e-6)], axis=1)


def states_to_boxes(states: np.ndarray) -> np.ndarray:
    """(N, >= 4) states -> (N, 4) boxes ``x1, y1, x2, y2``."""
    cx, cy, area, aspect = (states[:, i] for i in range(4))
    w = np.sqrt(np.maximum(area * aspect, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        h = np.where(w > 0, area / np.where(w > 0, w, 1.0), 0.0)
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


def box_to_measurement(box_xyxy: np.ndarray) -> np.ndarray:
    return boxes_to_measurements(box_xyxy)[0]


def state_to_box(state: np.ndarray) -> np.ndarray:
    return states_to_boxes(np.asarray(state, dtype=np.float64)[None])[0]


class KalmanBank:
    """The Kalman filters of N boxes, one row each, advanced together (no loop over boxes).

    ``x`` (N, 7) states, ``p`` (N, 7, 7) covariances.
    """

    def __init__(self, boxes_xyxy: np.ndarray | None = None):
        self.x = np.zeros((0, 7))
        self.p = np.zeros((0, 7, 7))
        if boxes_xyxy is not None:
            self.add(boxes_xyxy)

    def __len__(self) -> int:
        return len(self.x)

    def add(self, boxes_xyxy: np.ndarray) -> None:
        """New filters at the end, one per box."""
        z = boxes_to_measurements(boxes_xyxy)
        x = np.zeros((len(z), 7))
        x[:, :4] = z
        self.x = np.concatenate([self.x, x])
        self.p = np.concatenate([self.p, np.broadcast_to(P_INITIAL, (len(z), 7, 7))])

    def select(self, rows: np.ndarray) -> None:
        """Keep the filters of ``rows`` (indices or a boolean mask), in that order."""
        self.x, self.p = self.x[rows], self.p[rows]

    def predict(self) -> np.ndarray:
        """Advance every filter one slice; returns the (N, 4) predicted boxes."""
        self.x[self.x[:, 2] + self.x[:, 6] <= 0, 6] = 0.0  # the area would become negative
        self.x = self.x @ F_MATRIX.T
        self.p = F_MATRIX @ self.p @ F_MATRIX.T + Q_NOISE
        return states_to_boxes(self.x)

    def update(self, rows: np.ndarray, boxes_xyxy: np.ndarray) -> None:
        """Correct the filters of ``rows`` with the measured boxes (one per row)."""
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return
        x, p = self.x[rows], self.p[rows]
        y = boxes_to_measurements(boxes_xyxy) - x @ H_MATRIX.T
        s = H_MATRIX @ p @ H_MATRIX.T + R_NOISE
        k = p @ H_MATRIX.T @ np.linalg.inv(s)
        self.x[rows] = x + (k @ y[:, :, None])[:, :, 0]
        self.p[rows] = (np.eye(7) - k @ H_MATRIX) @ p


class KalmanBoxTracker:
    """Tracks one box from slice to slice (a bank of one filter)."""

    def __init__(self, box_xyxy: np.ndarray):
        self.bank = KalmanBank(np.asarray(box_xyxy, dtype=np.float64)[None])

    @property
    def x(self) -> np.ndarray:
        return self.bank.x[0]

    def predict(self) -> np.ndarray:
        """Advance one slice; returns the predicted box."""
        return self.bank.predict()[0]

    def update(self, box_xyxy: np.ndarray) -> None:
        self.bank.update(np.array([0]), np.asarray(box_xyxy, dtype=np.float64)[None])
