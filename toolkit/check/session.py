"""CheckSession: what every recipe judged in one check shares (the float model, the faces and pairs, the
thresholds, the calibration faces, the float32 reference files)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from device.manifest import load_manifest, manifest_path_for

from ..export import Recipe, export_keras
from .boards import Board, LocalBoard
from .disagreement import DisagreementSpec, disagreement_spec
from .judging import BoardResult, CheckData, check_board
from .levels import FeatureReference, feature_reference, tap_scales
from .options import CheckOptions
from .speed import Pricer


@dataclass(frozen=True)
class CheckSession:
    """One check's shared state. ``float32``: the float32 deploy and probe files (the feature level's
    reference and the search's price); ``out``: the check's folder; ``pricer``: where the search's
    recipes are timed (the host or a board)."""

    model: keras.Model
    meta: dict
    model_path: Path
    data: CheckData
    thresholds: dict
    calibration: np.ndarray
    float32: dict[str, Path]
    out: Path
    pricer: Pricer

    def export(self, recipes: Sequence[Recipe], out: Path) -> dict[str, dict[str, Path]]:
        """Export ``recipes`` of the session's model into ``out``, calibrated on the session's faces."""
        return export_keras(self.model, self.meta, out, list(recipes), calibration=self.calibration,
                            source=self.model_path)

    def feature_reference(self, opts: CheckOptions) -> FeatureReference:
        """The feature level's reference on the first ``opts.feature_images`` tap-level faces."""
        images = self.data.images[self.data.sample[:opts.feature_images]]
        float_board = LocalBoard(self.float32["deploy"], self.float32["probe"])
        return feature_reference(self.model, float_board, images, opts.subspace_size, opts.steps)

    def disagreement(self, opts: CheckOptions) -> DisagreementSpec:
        """The disagreement ascent against the float32 deploy file."""
        return disagreement_spec(self.data, self.float32["deploy"], opts)

    def judge(self, board: Board, files: dict[str, Path], reference: FeatureReference | None = None,
              disagreement: DisagreementSpec | None = None) -> BoardResult:
        """``board`` (holding ``files``) judged at every level asked for (feature statistics only with a
        ``reference``, the disagreement ascent only with its spec, shift where the data holds it)."""
        scales = tap_scales(load_manifest(manifest_path_for(files["probe"])))
        return check_board(self.model, board, self.data, scales, self.thresholds, reference, disagreement)
