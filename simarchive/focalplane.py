"""LSSTCam-like focal plane: 21 science rafts x 9 sensors = 189 detectors.

Detector numbering follows the LSSTCam/imSim convention used by DP0.2: rafts in the
order R01, R02, R03, R10..R14, R20..R24, R30..R34, R41, R42, R43 (a 5x5 grid without
the corner rafts), sensors S00, S01, S02, S10, .., S22, and
``detector = raft_index * 9 + sensor_index`` -- which makes ``R20_S20`` detector 78 as
in the seed's ``214437-R20_S20`` / ``lsst_ccdvisitid`` 214437078.  Names are
``R{rx}{ry}_S{sx}{sy}`` (first digit = column x, second = row y).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

PIXEL_SIZE_MM = 0.010
"""10 micron pixels."""
PIXEL_SCALE_ARCSEC = 0.2
"""Unbinned pixel scale; with 10 micron pixels this is a plate scale of 20 arcsec/mm."""
PLATE_SCALE_DEG_PER_MM = PIXEL_SCALE_ARCSEC / PIXEL_SIZE_MM / 3600.0
SENSOR_NX = 4072
"""Unbinned sensor width (ITL-like 4072 x 4000 calexp)."""
SENSOR_NY = 4000
SENSOR_PITCH_MM = 42.25
"""Sensor pitch inside a raft; 40.72 x 40.00 mm sensors leave ~1.5-2.3 mm gaps."""
RAFT_PITCH_MM = 127.0
N_AMP_X = 8
"""Amplifier layout: 2 rows x 8 columns of segments per sensor (dead-amp simulation)."""
N_AMP_Y = 2

_CORNER_RAFTS = {(0, 0), (0, 4), (4, 0), (4, 4)}
RAFTS: tuple[tuple[int, int], ...] = tuple(
    (rx, ry) for rx in range(5) for ry in range(5) if (rx, ry) not in _CORNER_RAFTS
)
SENSORS: tuple[tuple[int, int], ...] = tuple((sx, sy) for sx in range(3) for sy in range(3))
N_DETECTORS = len(RAFTS) * len(SENSORS)


@dataclass(frozen=True)
class Detector:
    """One sensor: its number, name and nominal centre on the focal plane (mm)."""

    number: int
    name: str
    x_mm: float
    y_mm: float


@cache
def detectors() -> tuple[Detector, ...]:
    """All 189 detectors in detector-number order."""
    out = []
    for r, (rx, ry) in enumerate(RAFTS):
        for s, (sx, sy) in enumerate(SENSORS):
            out.append(
                Detector(
                    number=r * len(SENSORS) + s,
                    name=f"R{rx}{ry}_S{sx}{sy}",
                    x_mm=(rx - 2) * RAFT_PITCH_MM + (sx - 1) * SENSOR_PITCH_MM,
                    y_mm=(ry - 2) * RAFT_PITCH_MM + (sy - 1) * SENSOR_PITCH_MM,
                )
            )
    return tuple(out)


def detector_name(number: int) -> str:
    """``R..._S..`` name of a detector number (IndexError if out of range)."""
    return detectors()[number].name


def detector_number(name: str) -> int:
    """Detector number of a ``R..._S..`` name (KeyError if unknown)."""
    return {d.name: d.number for d in detectors()}[name]


def detector_centres_mm() -> np.ndarray:
    """``(189, 2)`` array of nominal detector centres in mm."""
    return np.array([(d.x_mm, d.y_mm) for d in detectors()])


def binned_shape(binning: int) -> tuple[int, int]:
    """(NAXIS1, NAXIS2) of a detector image after ``binning`` x ``binning`` binning."""
    return SENSOR_NX // binning, SENSOR_NY // binning
