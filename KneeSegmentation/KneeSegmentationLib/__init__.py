"""Logic layer of the KneeSegmentation Slicer module (no Qt: MRML, vtk, numpy and the kneeseg core).

``KneeSegmentationLogic`` segments knee bones and trains models by running the ``kneeseg`` command
line in a separate process; ``TrainingPlot`` keeps the live training chart; ``dependencies`` finds and
installs missing Python packages.
"""

from .errors import KneeSegmentationError
from .logic import (KneeSegmentationLogic, SegmentationOptions, SegmentationRun, TrainingOptions, TrainingRun,
                    validateInputVolume)
from .plotting import TrainingPlot

__all__ = [
    "KneeSegmentationError",
    "KneeSegmentationLogic",
    "SegmentationOptions",
    "SegmentationRun",
    "TrainingOptions",
    "TrainingPlot",
    "TrainingRun",
    "validateInputVolume",
]
