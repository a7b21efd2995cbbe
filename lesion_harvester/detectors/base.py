"""The contract every detector of the project keeps: the MSCN (and its 3-slice CenterNet), MONAI's
RetinaNet, and any detector added later.

A detector here finds lesions on one axial slice from that slice and its neighbours (its slice
context); it trains on crops and is scanned over whole volumes, and its 2D boxes are stacked into
3D by the project's tracker. As torchvision's detection models and detectron2's meta-architectures,
it is one ``nn.Module`` that

- builds its training targets from crops (:meth:`DetectionModel.build_targets`, in the loader's
  worker processes),
- computes its loss from its outputs and those targets (``forward`` returns outputs only;
  :meth:`DetectionModel.loss`),
- decodes boxes on the slices of a volume (:meth:`DetectionModel.detect_slices`),
- writes and reads its checkpoint payload (:meth:`DetectionModel.payload`, :meth:`DetectionModel.load`).

One resumable training loop (:func:`lesion_harvester.lpg.train.train_detector`) and one scanning path
(:class:`lesion_harvester.lpg.scan.Scanner`, :func:`lesion_harvester.lpg.propose.propose`) serve
every detector; :data:`lesion_harvester.peers.detectors.DETECTORS` names them.

Boxes are ``x1, y1, x2, y2`` in inclusive pixels (x the column; a width is ``x2 - x1 + 1``): of the
crop in a :class:`Crop`, of the padded network input in :meth:`DetectionModel.detect_slices`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from lesion_harvester.config import LPGTrainConfig, PreprocessConfig, Preset, ScanConfig, StackConfig, fingerprint
from lesion_harvester.io.torch_files import check_format, load_weights_only


@dataclass
class Crop:
    """One training sample, in pixels of the crop after augmentation.

    Attributes:
        image: (S, H, W) float32 network input, S = the detector's slice context.
        positives: (N, 4) float64 lesion boxes.
        negatives: (M, 4) float64 hard-negative boxes (trained through the HNSL where the detector has it).
        complete: whether every lesion of the crop's volume is labelled (V_M).
    """

    image: np.ndarray
    positives: np.ndarray
    negatives: np.ndarray
    complete: bool


# (target slice indices of one batch, per slice its boxes (K_i, 4) and scores (K_i,)), K_i may differ
SliceDetections = tuple[list[int], Sequence[np.ndarray], Sequence[np.ndarray]]


class DetectionModel(nn.Module, ABC):
    """A detector of lesions on slices (see the module). A subclass names its checkpoint format and
    says which parts of the training loop apply to it:

    - ``validated``: scanned during training: validated after each epoch (``best.pt`` is the epoch of
      the best validation FROC, and gets an operating point), and mining hard background on V_M where
      ``lpg_train.mine_hard_background`` asks. Otherwise ``best.pt`` is the last epoch.
    - ``hard_negatives``: trains on hard negatives (the HNSL); otherwise a label set with them is refused.
    - ``distributed``: can train under torchrun (its loss normalised over the global batch,
      :meth:`loss_totals`); otherwise it trains as one process.
    - ``amp``: may run in half precision on CUDA (training with ``lpg_train.amp``, scanning with ``scan.amp``).
    """

    FORMAT: ClassVar[str]  # checkpoint format, "name/version"
    WHAT: ClassVar[str]  # how logs and errors name it ("LPG", "RetinaNet")
    SETTINGS_KEY: ClassVar[str] = "config"  # the checkpoint entry that holds its settings
    validated: ClassVar[bool] = True
    hard_negatives: ClassVar[bool] = True
    distributed: ClassVar[bool] = True
    amp: ClassVar[bool] = True
    size_divisible: ClassVar[int] = 16  # a scanned slice is padded (with air) to a multiple of this
    num_slices: int  # S, the slice context: slices around (and with) the target slice, as input channels

    # --- settings and building --------------------------------------------------------------------------
    @classmethod
    def configure(cls, preset: Preset) -> Preset:
        """``preset`` as this detector trains with it (the 3-slice CenterNet sets ``lpg.num_slices``)."""
        return preset

    @classmethod
    @abstractmethod
    def settings(cls, preset: Preset) -> Any:
        """Its architecture settings in ``preset`` (a settings dataclass), which :meth:`build` builds."""

    @classmethod
    def build(cls, preset: Preset) -> DetectionModel:
        """A new (randomly initialised) model of ``preset``'s settings; draws from torch's generator."""
        return cls(cls.settings(preset))

    @classmethod
    def training_fingerprint(cls, preset: Preset, data: str | Path, inputs: list) -> str:
        """What a resumed training must share with the run it continues: the detector's settings,
        the training and preprocessing settings, the data folder and ``inputs`` (the label files, the
        initial weights, ...)."""
        return fingerprint(cls.settings(preset), preset.lpg_train, preset.preprocess, str(Path(data).resolve()),
                           inputs)

    # --- checkpoints -----------------------------------------------------------------------------------------
    @classmethod
    def read_checkpoint(cls, path: str | Path, required: tuple[str, ...] = ()) -> dict:
        """A checkpoint's payload (``torch.load(weights_only=True)``), refused in one line naming the file
        unless it is of this detector's format and holds the ``required`` entries."""
        return check_format(load_weights_only(path, "checkpoint"), path, cls.FORMAT, f"{cls.WHAT} checkpoint",
                            required)

    @classmethod
    @abstractmethod
    def load(cls, path: str | Path, device: str = "cpu",
             payload: dict | None = None) -> tuple[DetectionModel, PreprocessConfig, StackConfig]:
        """(the model in eval mode, the preprocessing and the stacking settings it was trained with)
        from a checkpoint; ``payload``: the checkpoint already read from ``path``. The settings are
        checked against the weights before a model is built."""

    @abstractmethod
    def payload(self, pre: PreprocessConfig, stack: StackConfig, **extra) -> dict:
        """A checkpoint that describes itself: format, versions, its settings, ``pre``, ``stack``, the
        weights and ``extra`` (epoch, optimiser state, ...); plain data only, for ``weights_only`` loading."""

    @abstractmethod
    def load_weights(self, payload: dict, path: str | Path) -> None:
        """The weights of a checkpoint ``payload`` (read from ``path``, named in errors) into this model."""

    # --- training ---------------------------------------------------------------------------------------
    @abstractmethod
    def build_targets(self, crops: list[Crop], train: LPGTrainConfig) -> Any:
        """The training targets of a batch of ``crops`` (tensors on the CPU; run in loader workers, so
        they use no weights). Crops of different sizes are padded at the bottom and right."""

    @abstractmethod
    def loss(self, outputs: Any, targets: Any, train: LPGTrainConfig,
             totals: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """(the loss to minimise, its parts for the progress bar) of ``forward``'s ``outputs``.
        ``totals``: :meth:`loss_totals` summed over the ranks under torchrun, so that the ranks' losses
        add up to the loss of the whole batch."""

    def loss_totals(self, targets: Any) -> torch.Tensor:
        """What the loss of ``targets`` is normalised by (counts of objects ...), for :meth:`loss`."""
        raise NotImplementedError(f"{type(self).__name__} does not train under torchrun")

    def weights(self) -> nn.Module:
        """The module whose state dict a checkpoint holds."""
        return self

    # --- scanning ---------------------------------------------------------------------------------------
    @abstractmethod
    def detect_slices(self, volume: torch.Tensor, positions: np.ndarray, targets: list[int],
                      scan: ScanConfig) -> Iterator[SliceDetections]:
        """2D detections of the ``targets`` slices of a volume, batch by batch (``scan.batch_slices``).

        Args:
            volume: (Z, H, W) network input of a whole volume, padded to a multiple of ``size_divisible``.
            positions: (Z, num_slices) float slice positions of each target's context
                (:meth:`~lesion_harvester.preprocessing.PreparedVolume.context_positions`).
        Yields:
            (slice indices, their boxes (K_i, 4) in pixels of ``volume``, their scores (K_i,)).
        """

    def compile_parts(self) -> DetectionModel:
        """This model with what a scan calls compiled by ``torch.compile`` (dynamic shapes)."""
        self.forward = torch.compile(self.forward, dynamic=True)
        return self
