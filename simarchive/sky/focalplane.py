"""Focal planes: LSSTCam (21 science rafts x 9 sensors) and LSSTComCam (one raft, 9).

Detector numbering follows the LSSTCam/imSim convention used by DP0.2: rafts in the
order R01, R02, R03, R10..R14, R20..R24, R30..R34, R41, R42, R43 (a 5x5 grid without
the corner rafts), sensors S00, S01, S02, S10, .., S22, and
``detector = raft_index * 9 + sensor_index`` -- which makes ``R20_S20`` detector 78 as
in the seed's ``214437-R20_S20`` / ``lsst_ccdvisitid`` 214437078.  Names are
``R{rx}{ry}_S{sx}{sy}`` (first digit = column x, second = row y).  LSSTComCam is the
single raft R22 at the centre: detectors 0..8 = ``R22_S00``..``R22_S22`` (4 = S11).

Each camera also carries its optical distortion, a radial cubic in the focal plane
(:func:`distort_mm`).  DP0.2's imSim headers are plain TAN, so LSSTCam's is zero here;
LSSTComCam's moves the mosaic corners by a few pixels, which DP1's TAN-SIP headers
approximate.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from types import MappingProxyType
from typing import Final

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

COMCAM_DISTORTION_PER_MM2: Final = 2.5e-7
"""Radial cubic coefficient: a point r mm from the boresight lands at r (1 + k r^2).  At
the mosaic corners (r ~ 88 mm) that is 0.17 mm = 17 px (3.4") of pincushion, most of it a
scale change; what is left for each detector's SIP polynomial at its corners is ~4 px
for the corner detectors, ~2.5 px for the edge ones, ~0.6 px for R22_S11."""


@dataclass(frozen=True)
class Detector:
    """One sensor: its number, name and nominal centre on the focal plane (mm)."""

    number: int
    name: str
    x_mm: float
    y_mm: float


@dataclass(frozen=True)
class Camera:
    """A focal plane: which rafts are populated and how the optics distort it."""

    name: str
    rafts: tuple[tuple[int, int], ...]
    distortion_per_mm2: float = 0.0

    def detectors(self) -> tuple[Detector, ...]:
        return _camera_detectors(self.rafts)

    def centres_mm(self) -> np.ndarray:
        """``(n_detectors, 2)`` array of nominal detector centres in mm."""
        return _camera_centres(self.rafts).copy()


@cache
def _camera_detectors(rafts: tuple[tuple[int, int], ...]) -> tuple[Detector, ...]:
    out = []
    for r, (rx, ry) in enumerate(rafts):
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


@cache
def _camera_centres(rafts: tuple[tuple[int, int], ...]) -> np.ndarray:
    return np.array([(d.x_mm, d.y_mm) for d in _camera_detectors(rafts)])


CAMERAS: Final[MappingProxyType[str, Camera]] = MappingProxyType(
    {
        "LSSTCam": Camera("LSSTCam", RAFTS),
        "LSSTComCam": Camera("LSSTComCam", ((2, 2),), COMCAM_DISTORTION_PER_MM2),
    }
)


def get_camera(name: str) -> Camera:
    """The camera of a survey shape; ValueError names the known ones."""
    try:
        return CAMERAS[name]
    except KeyError:
        raise ValueError(f"unknown camera {name!r}; known: {sorted(CAMERAS)}") from None


def distort_mm(x: np.ndarray, y: np.ndarray, k: float) -> tuple[np.ndarray, np.ndarray]:
    """Where the optics put a focal-plane point: radially out by ``k r^3`` (mm in, mm out).

    Returns the inputs unchanged (same objects) when ``k == 0`` so that undistorted
    cameras stay bit-identical to the plain-TAN model.
    """
    if k == 0.0:
        return x, y
    f = 1.0 + k * (np.square(x) + np.square(y))
    return x * f, y * f


def detectors() -> tuple[Detector, ...]:
    """All 189 LSSTCam detectors in detector-number order."""
    return CAMERAS["LSSTCam"].detectors()


def detector_name(number: int) -> str:
    """``R..._S..`` name of an LSSTCam detector number (IndexError if out of range)."""
    return detectors()[number].name


def detector_number(name: str) -> int:
    """Detector number of an LSSTCam ``R..._S..`` name (KeyError if unknown)."""
    return {d.name: d.number for d in detectors()}[name]


def detector_centres_mm() -> np.ndarray:
    """``(189, 2)`` array of nominal LSSTCam detector centres in mm."""
    return CAMERAS["LSSTCam"].centres_mm()


def binned_shape(binning: int) -> tuple[int, int]:
    """(NAXIS1, NAXIS2) of a detector image after ``binning`` x ``binning`` binning."""
    return SENSOR_NX // binning, SENSOR_NY // binning
