"""A small image collection with a known truth, for publishing through a real archive.

Eight 300x300 float32 images with TAN WCS (slightly rotated, 1"/px), tiled 4x2 near
(150, +2) with overlapping edges, laid out as many archives do: an empty primary HDU and
the image in HDU 1 (``EXTNAME = 'IMAGE'``). Each image's published ``s_region`` is
*padded*: the sky footprint of the pixel box grown by ``PAD_FRACTION`` of its size on every
side, written into HDU 1 as ``PADRA1..4``/``PADDE1..4`` for the archive to publish. A
target in that margin is an ``s_region`` false positive: ObsTAP returns the image, its
pixels do not contain the target.

The truth -- which image's pixels contain which target -- comes from the generated WCS
alone (astropy's world-to-pixel and the pixel bounds), independently of obsharvest. The
targets are placed (and checked) at least ``EDGE_CLEARANCE_PX`` pixels away from every
pixel and padding edge, so no convention about edge pixels can change a verdict.
"""

from __future__ import annotations

import csv
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

NX = NY = 300  # pixels
SCALE_DEG = 1.0 / 3600.0  # 1 arcsec per pixel
CENTRE = (150.0, 2.0)  # deg, ICRS: the middle of the 4x2 tile grid
STEP_PX = 250  # tile centres this many pixels apart: 50 px overlaps
PAD_FRACTION = 0.10  # s_region grows by 10 % of the image size on each side (20 % wider)
EDGE_CLEARANCE_PX = 5.0
TARGET_NAME = "FIELD-A"  # ObsCore target_name of every image
MJD_OBS = 60310.25
SEED = 20260101


@dataclass(frozen=True)
class Image:
    """One generated image: ``frame_id`` is its file stem and its ObsCore obs_id."""

    frame_id: str
    crval: tuple[float, float]
    rotation_deg: float

    def wcs(self) -> WCS:
        w = WCS(naxis=2)
        w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        w.wcs.cunit = ["deg", "deg"]
        w.wcs.crpix = [(NX + 1) / 2.0, (NY + 1) / 2.0]
        w.wcs.crval = list(self.crval)
        rot = math.radians(self.rotation_deg)
        # east to the left (RA grows to -x), north up, then rotated
        w.wcs.cd = SCALE_DEG * np.array(
            [[-math.cos(rot), math.sin(rot)], [math.sin(rot), math.cos(rot)]]
        )
        w.wcs.radesys = "ICRS"
        w.wcs.equinox = 2000.0
        w.pixel_shape = (NX, NY)
        return w

    def pixel(self, ra: float, dec: float) -> tuple[float, float]:
        """0-based pixel coordinates (x, y) of a sky position."""
        x, y = self.wcs().all_world2pix([[ra, dec]], 0)[0]
        return float(x), float(y)

    def pixel_edge_distance(self, ra: float, dec: float) -> float:
        """Pixels from the nearest image edge: > 0 inside, < 0 outside."""
        x, y = self.pixel(ra, dec)
        return min(x + 0.5, NX - 0.5 - x, y + 0.5, NY - 0.5 - y)

    def contains(self, ra: float, dec: float) -> bool:
        """The truth: the position falls on this image's pixels."""
        return self.pixel_edge_distance(ra, dec) > 0

    def padding_edge_distance(self, ra: float, dec: float) -> float:
        """Pixels from the nearest edge of the padded box: > 0 inside the padded s_region."""
        x, y = self.pixel(ra, dec)
        px, py = PAD_FRACTION * NX, PAD_FRACTION * NY
        return min(x + 0.5 + px, NX - 0.5 + px - x, y + 0.5 + py, NY - 0.5 + py - y)

    def padded_region(self) -> list[tuple[float, float]]:
        """Vertices (ra, dec) of the padded s_region: the pixel box's corners grown by
        PAD_FRACTION on each side, in the same order as ``WCS.calc_footprint``."""
        px, py = PAD_FRACTION * NX, PAD_FRACTION * NY
        x0, x1 = -0.5 - px, NX - 0.5 + px
        y0, y1 = -0.5 - py, NY - 0.5 + py
        corners = [(x0, y0), (x0, y1), (x1, y1), (x1, y0)]
        return [tuple(map(float, p)) for p in self.wcs().all_pix2world(corners, 0)]

    def hdus(self, rng: np.random.Generator) -> fits.HDUList:
        primary = fits.PrimaryHDU()
        primary.header["ORIGIN"] = ("obsharvest interop tests", "synthetic data")
        primary.header["FRAMEID"] = self.frame_id
        primary.header["OBJECT"] = TARGET_NAME
        data = rng.normal(100.0, 5.0, size=(NY, NX)).astype(np.float32)
        header = self.wcs().to_header()
        header["EXTNAME"] = "IMAGE"
        header["FRAMEID"] = (self.frame_id, "obs_id")
        header["OBJECT"] = TARGET_NAME
        header["FILTER"] = "r"
        header["MJD-OBS"] = MJD_OBS
        header["EXPTIME"] = 30.0
        for i, (ra, dec) in enumerate(self.padded_region(), start=1):
            header[f"PADRA{i}"] = (round(ra, 9), "padded s_region vertex RA (deg)")
            header[f"PADDE{i}"] = (round(dec, 9), "padded s_region vertex Dec (deg)")
        image = fits.ImageHDU(data=data, header=header, name="IMAGE")
        return fits.HDUList([primary, image])


@dataclass(frozen=True)
class Target:
    name: str
    ra: float
    dec: float
    why: str


def _offset(ra: float, dec: float, dx_arcsec: float, dy_arcsec: float) -> tuple[float, float]:
    """A small tangent-plane offset (+dx = east)."""
    return (
        ra + dx_arcsec / 3600.0 / math.cos(math.radians(dec)),
        dec + dy_arcsec / 3600.0,
    )


class Collection:
    """The images, the targets and the truth."""

    def __init__(self) -> None:
        ra0, dec0 = CENTRE
        rotations = [0.0, 1.5, -1.0, 2.0, -2.0, 0.5, 1.0, -1.5]
        images = []
        for row in range(2):
            for col in range(4):
                # columns go east to west (x grows to the west), rows south to north
                dx = -(col - 1.5) * STEP_PX
                dy = (row - 0.5) * STEP_PX
                crval = _offset(ra0, dec0, dx, dy)
                n = row * 4 + col
                images.append(Image(f"fa-{n + 1:02d}", crval, rotations[n]))
        self.images: list[Image] = images
        self.targets: list[Target] = self._targets()
        self._check()

    def image(self, frame_id: str) -> Image:
        return next(i for i in self.images if i.frame_id == frame_id)

    def _targets(self) -> list[Target]:
        im = {i.frame_id: i for i in self.images}
        w = {k: v.wcs() for k, v in im.items()}

        def sky(frame: str, x: float, y: float) -> tuple[float, float]:
            ra, dec = w[frame].all_pix2world([[x, y]], 0)[0]
            return float(ra), float(dec)

        c = (NX - 1) / 2.0
        pad = PAD_FRACTION * NX
        # grid: fa-01..04 bottom row (x grows westward = to higher col), fa-05..08 top row
        solo = sky("fa-01", c - 60, c - 60)
        # middle of the 50 px overlap between fa-02 and fa-03 (neighbours in a row)
        pair_ra = (im["fa-02"].crval[0] + im["fa-03"].crval[0]) / 2
        pair_dec = (im["fa-02"].crval[1] + im["fa-03"].crval[1]) / 2 - 40 / 3600
        # where fa-01, fa-02, fa-05 and fa-06 all overlap: their four centres' mean
        quad = tuple(
            float(np.mean([im[f].crval[k] for f in ("fa-01", "fa-02", "fa-05", "fa-06")]))
            for k in (0, 1)
        )
        # beyond fa-04's outer (west, +x) edge: in its padding only, on no image's pixels
        pad_only = sky("fa-04", NX - 0.5 + pad / 2, c)
        # above fa-07's top edge: in fa-07's padding, outside every image (nothing north)
        pad_top = sky("fa-07", c + 20, NY - 0.5 + pad / 2)
        # just north of fa-03's top edge: in fa-03's padding, on fa-07's pixels
        edge = sky("fa-03", c, NY - 0.5 + 15)
        # south of everything, beyond any s_region: no ObsCore row at all
        nowhere = _offset(CENTRE[0], CENTRE[1], 0.0, -1500.0)
        return [
            Target("t1-solo", *solo, "on fa-01 only"),
            Target("t2-pair", pair_ra, pair_dec, "in the fa-02/fa-03 overlap"),
            Target("t3-quad", *quad, "where fa-01, fa-02, fa-05, fa-06 overlap"),
            Target("t4-padding", *pad_only, "in fa-04's padded s_region, on no pixels"),
            Target("t5-padding-top", *pad_top, "in fa-07's padded s_region, on no pixels"),
            Target("t6-nowhere", *nowhere, "outside every s_region"),
            Target("t7-edge", *edge, "on fa-07, in fa-03's padded s_region"),
        ]

    def _check(self) -> None:
        """The targets do what their names say, with clear margins."""
        for t in self.targets:
            for i in self.images:
                for d in (i.pixel_edge_distance(t.ra, t.dec), i.padding_edge_distance(t.ra, t.dec)):
                    assert abs(d) >= EDGE_CLEARANCE_PX, (
                        f"{t.name} is {d:.1f} px from an edge of {i.frame_id}"
                    )
        on = {
            t.name: {i.frame_id for i in self.images if i.contains(t.ra, t.dec)}
            for t in self.targets
        }
        padded = {t.name: self.in_padded_region(t) for t in self.targets}
        assert on["t1-solo"] == {"fa-01"}, on["t1-solo"]
        assert on["t2-pair"] == {"fa-02", "fa-03"}, on["t2-pair"]
        assert on["t3-quad"] == {"fa-01", "fa-02", "fa-05", "fa-06"}, on["t3-quad"]
        assert on["t4-padding"] == set() and padded["t4-padding"] == {"fa-04"}
        assert on["t5-padding-top"] == set() and "fa-07" in padded["t5-padding-top"]
        assert on["t6-nowhere"] == set() and padded["t6-nowhere"] == set()
        assert on["t7-edge"] == {"fa-07"} and padded["t7-edge"] == {"fa-03", "fa-07"}
        # every image whose pixels contain a target is also returned by its s_region
        for t in self.targets:
            assert on[t.name] <= padded[t.name], t.name
        # some s_region matches are false positives, and some images are never stored
        assert any(padded[t.name] - on[t.name] for t in self.targets)
        assert self.stored_frames() != {i.frame_id for i in self.images}

    def in_padded_region(self, target: Target) -> set[str]:
        """Images whose padded s_region contains the target (what ObsTAP will return)."""
        return {
            i.frame_id for i in self.images if i.padding_edge_distance(target.ra, target.dec) > 0
        }

    def truth(self) -> set[tuple[str, str]]:
        """(target name, frame_id) for every image whose pixels contain the target."""
        return {
            (t.name, i.frame_id)
            for t in self.targets
            for i in self.images
            if i.contains(t.ra, t.dec)
        }

    def sregion_pairs(self) -> set[tuple[str, str]]:
        """(target name, frame_id) for every padded s_region containing the target."""
        return {(t.name, f) for t in self.targets for f in self.in_padded_region(t)}

    def stored_frames(self) -> set[str]:
        """Frames a correct harvest stores: those containing at least one target."""
        return {frame for _, frame in self.truth()}

    def write_images(self, directory: Path) -> dict[str, Path]:
        """Writes one ``<frame_id>.fits`` per image; returns frame_id -> path."""
        directory.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(SEED)
        paths = {}
        for image in self.images:
            path = directory / f"{image.frame_id}.fits"
            image.hdus(rng).writeto(path, overwrite=True)
            paths[image.frame_id] = path
        return paths

    def write_targets(self, path: Path) -> Path:
        with path.open("w", newline="") as fh:
            out = csv.writer(fh)
            out.writerow(["name", "ra", "dec"])
            for t in self.targets:
                out.writerow([t.name, f"{t.ra:.10f}", f"{t.dec:.10f}"])
        return path


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
