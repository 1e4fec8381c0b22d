"""IVOA SODA 1.0 synchronous cutouts (``/api/cutout/sync``), as pure functions.

Like the Rubin Science Platform's cutout service, a request names one dataset (``ID``)
and one spatial shape, given as ``CIRCLE="ra dec r"``, ``POLYGON="ra1 dec1 ra2 dec2 ..."``
or ``POS="CIRCLE ..." | "POLYGON ..." | "RANGE ra1 ra2 dec1 dec2"`` (ICRS degrees).

* :func:`parse_soda_params` turns the request's parameters into ``(id, CutoutShape)``
  or raises :class:`SodaError` (``UsageFault``).
* :func:`write_cutout` cuts every image HDU of a FITS file to the pixel box of the shape
  and writes a new file; :class:`SodaError` ``NoOverlap`` if the shape misses the image.

Errors: ``str(err)`` is the DALI/SODA error text, e.g. ``"UsageFault: CIRCLE radius must
be > 0, got -1"``, and ``err.status`` the HTTP status to answer with: 400 for
``UsageFault`` and ``NoOverlap`` (SODA's examples answer both as bad requests), 404 for
``NotFoundFault`` (the source file is missing), 500 for ``FatalFault`` (unreadable file).
"""

from __future__ import annotations

import math
import os
import re
import tempfile
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
from astropy.io import fits
from astropy.utils.exceptions import AstropyWarning
from astropy.wcs import WCS

from obsharvest.simarchive.adql.geometry import radec_to_xyz
from obsharvest.simarchive.soda_region import (
    CircleRegion,
    PolygonRegion,
    RangeRegion,
    Region,
    _gnomonic,
    angle,
    pixel_box,
    tangent_basis,
)

ShapeKind = Literal["CIRCLE", "POLYGON", "RANGE"]

SHAPE_PARAMS = ("POS", "CIRCLE", "POLYGON")
UNSUPPORTED_PARAMS = ("BAND", "TIME", "POL")
FITS_FORMATS = ("application/fits", "image/fits", "fits")
MAX_POLYGON_VERTICES = 1000
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_INFINITY = re.compile(r"^([+-]?)inf(inity)?$", re.IGNORECASE)
_WCS_SHIFT_KEY = re.compile(r"^(CRPIX|LTV)([12])([A-Z]?)$")
_CHECKSUM_KEYS = ("CHECKSUM", "DATASUM")


class SodaError(ValueError):
    """A SODA/DALI error: ``str(err)`` is ``"<Fault>: <message>"``; ``status`` the HTTP status."""

    STATUS: ClassVar[dict[str, int]] = {
        "UsageFault": 400,
        "NoOverlap": 400,
        "NotFoundFault": 404,
        "FatalFault": 500,
    }

    def __init__(self, fault: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{fault}: {message}")
        self.fault = fault
        self.message = message
        self.status = status if status is not None else self.STATUS.get(fault, 400)


def _usage(message: str) -> SodaError:
    return SodaError("UsageFault", message)


# ---------------------------------------------------------------------------
# shapes


@dataclass(frozen=True)
class CutoutShape:
    """A spatial cutout region in ICRS degrees; build with :meth:`circle`, :meth:`polygon`
    or :meth:`range` (which normalise RA to [0, 360)); invalid values raise ``UsageFault``.

    ``values`` holds ``(ra, dec, radius)`` for a circle, ``(ra1, dec1, ra2, dec2, ...)``
    for a polygon and ``(ra1, ra2, dec1, dec2)`` for a range.  ``str(shape)`` is the
    ``POS`` value that parses back to the same shape.
    """

    kind: ShapeKind
    values: tuple[float, ...]

    @classmethod
    def circle(cls, ra: float, dec: float, radius: float) -> CutoutShape:
        return cls("CIRCLE", (_norm_ra(ra, "CIRCLE"), float(dec), float(radius)))

    @classmethod
    def polygon(cls, vertices: Iterable[tuple[float, float]]) -> CutoutShape:
        flat: list[float] = []
        for ra, dec in vertices:
            flat += [_norm_ra(ra, "POLYGON"), float(dec)]
        return cls("POLYGON", tuple(flat))

    @classmethod
    def range(cls, ra1: float, ra2: float, dec1: float, dec2: float) -> CutoutShape:
        """RA interval [ra1, ra2] (ra1 may be negative to wrap through 0; ±inf: all RA),
        Dec interval [dec1, dec2] (±inf: up to the pole)."""
        ra1, ra2, dec1, dec2 = float(ra1), float(ra2), float(dec1), float(dec2)
        if ra1 == math.inf or ra2 == -math.inf:
            raise _usage(f"RANGE: RA interval [{ra1:g}, {ra2:g}] is empty")
        if dec1 == math.inf or dec2 == -math.inf:
            raise _usage(f"RANGE: Dec interval [{dec1:g}, {dec2:g}] is empty")
        ra1 = 0.0 if ra1 == -math.inf else ra1
        ra2 = 360.0 if ra2 == math.inf else ra2
        dec1 = -90.0 if dec1 == -math.inf else dec1
        dec2 = 90.0 if dec2 == math.inf else dec2
        return cls("RANGE", (ra1, ra2, dec1, dec2))

    def __post_init__(self) -> None:
        v = self.values
        if not all(isinstance(x, float) and math.isfinite(x) for x in v):
            raise _usage(f"{self.kind}: coordinates must be finite numbers, got {v}")
        if self.kind == "CIRCLE":
            if len(v) != 3:
                raise _usage(f"CIRCLE needs 3 numbers (ra dec radius), got {len(v)}")
            _check_ra(v[0], "CIRCLE")
            _check_dec(v[1], "CIRCLE")
            if not 0.0 < v[2] <= 180.0:
                raise _usage(f"CIRCLE radius must be > 0 and <= 180 degrees, got {v[2]:g}")
        elif self.kind == "POLYGON":
            if len(v) % 2:
                raise _usage(f"POLYGON needs pairs of numbers (ra dec), got {len(v)} numbers")
            if len(v) < 6:
                raise _usage(f"POLYGON needs at least 3 vertices, got {len(v) // 2}")
            if len(v) > 2 * MAX_POLYGON_VERTICES:
                raise _usage(
                    f"POLYGON has {len(v) // 2} vertices, at most {MAX_POLYGON_VERTICES} allowed"
                )
            for ra, dec in zip(v[0::2], v[1::2], strict=True):
                _check_ra(ra, "POLYGON")
                _check_dec(dec, "POLYGON")
            _check_polygon(np.asarray(v[0::2]), np.asarray(v[1::2]))
        elif self.kind == "RANGE":
            if len(v) != 4:
                raise _usage(f"RANGE needs 4 numbers (ra1 ra2 dec1 dec2), got {len(v)}")
            ra1, ra2, dec1, dec2 = v
            if not -360.0 <= ra1 <= 360.0:
                raise _usage(f"RANGE: RA {ra1:g} out of range [-360, 360]")
            if not ra1 < ra2 <= ra1 + 360.0:
                raise _usage(
                    f"RANGE: RA interval [{ra1:g}, {ra2:g}] must have ra1 < ra2 <= ra1 + 360 "
                    "(use a negative ra1 to wrap through 0)"
                )
            _check_dec(dec1, "RANGE")
            _check_dec(dec2, "RANGE")
            if not dec1 < dec2:
                raise _usage(f"RANGE: Dec interval [{dec1:g}, {dec2:g}] must have dec1 < dec2")
        else:
            raise _usage(f"unknown shape {self.kind!r} (expected CIRCLE, POLYGON or RANGE)")

    # -- accessors ---------------------------------------------------------

    @property
    def center(self) -> tuple[float, float]:
        """(ra, dec) of a circle's centre."""
        self._need("CIRCLE")
        return self.values[0], self.values[1]

    @property
    def radius(self) -> float:
        self._need("CIRCLE")
        return self.values[2]

    @property
    def vertices(self) -> tuple[tuple[float, float], ...]:
        self._need("POLYGON")
        return tuple(zip(self.values[0::2], self.values[1::2], strict=True))

    def _need(self, kind: str) -> None:
        if self.kind != kind:
            raise AttributeError(f"a {self.kind} shape has no {kind} parameters")

    def __str__(self) -> str:
        return f"{self.kind} " + " ".join(repr(x) for x in self.values)

    def region(self) -> Region:
        """The shape as a unit-vector region for :func:`obsharvest.simarchive.soda_region.pixel_box`."""
        v = self.values
        if self.kind == "CIRCLE":
            return CircleRegion(radec_to_xyz(v[0], v[1]), math.radians(v[2]))
        if self.kind == "RANGE":
            return RangeRegion(*v)
        verts = radec_to_xyz(np.asarray(v[0::2]), np.asarray(v[1::2]))
        return PolygonRegion(verts, _polygon_center(verts))


def _norm_ra(ra: float, where: str) -> float:
    ra = float(ra)
    if not math.isfinite(ra):
        raise _usage(f"{where}: RA must be a finite number, got {ra}")
    if not -360.0 <= ra <= 360.0:
        raise _usage(f"{where}: RA {ra:g} out of range [-360, 360]")
    return ra % 360.0


def _check_ra(ra: float, where: str) -> None:
    if not 0.0 <= ra < 360.0:
        raise _usage(f"{where}: RA {ra:g} out of range [0, 360)")


def _check_dec(dec: float, where: str) -> None:
    if not -90.0 <= dec <= 90.0:
        raise _usage(f"{where}: Dec {dec:g} out of range [-90, 90]")


def _polygon_center(verts: np.ndarray) -> np.ndarray:
    s = verts.sum(axis=0)
    n = np.linalg.norm(s)
    return s / n if n > 0 else s


def _check_polygon(ras: np.ndarray, decs: np.ndarray) -> None:
    """Distinct consecutive vertices, within a hemisphere, non-zero area, no crossing edges."""
    verts = radec_to_xyz(ras, decs)
    nxt = np.roll(verts, -1, axis=0)
    if (angle(verts, nxt) < 1e-12).any():
        raise _usage("POLYGON has repeated consecutive vertices")
    center = _polygon_center(verts)
    if (
        not np.isfinite(center).all()
        or np.linalg.norm(center) == 0
        or (verts @ center).min() < 0.02
    ):
        raise _usage("POLYGON must fit within a hemisphere (all vertices < 89 deg from its centre)")
    e1, e2 = tangent_basis(center)
    x, y, _ = _gnomonic(verts, center, e1, e2)
    xn, yn = np.roll(x, -1), np.roll(y, -1)
    m = len(x)
    if m > 3:
        # proper crossings between non-adjacent edges, by orientation signs
        ax, ay, bx, by = x[:, None], y[:, None], xn[:, None], yn[:, None]
        cx, cy, dx, dy = x[None, :], y[None, :], xn[None, :], yn[None, :]

        def orient(px, py, qx, qy, rx, ry):
            return np.sign((qx - px) * (ry - py) - (qy - py) * (rx - px))

        cross = (orient(ax, ay, bx, by, cx, cy) * orient(ax, ay, bx, by, dx, dy) < 0) & (
            orient(cx, cy, dx, dy, ax, ay) * orient(cx, cy, dx, dy, bx, by) < 0
        )
        i, j = np.indices((m, m))
        gap = (j - i) % m
        if (cross & (gap > 1) & (gap < m - 1)).any():
            raise _usage("POLYGON edges cross each other (self-intersecting polygon)")
    area2 = float(np.sum(x * yn - xn * y))
    scale = float(np.max(np.hypot(x, y))) ** 2
    if abs(area2) <= 1e-12 * max(scale, 1e-300):
        raise _usage("POLYGON has zero area (vertices are collinear)")


# ---------------------------------------------------------------------------
# parameters


def _numbers(text: str, where: str, *, allow_inf: bool = False) -> list[float]:
    out: list[float] = []
    for token in text.split():
        if _NUMBER.match(token):
            out.append(float(token))
        elif allow_inf and (m := _INFINITY.match(token)):
            out.append(-math.inf if m.group(1) == "-" else math.inf)
        else:
            raise _usage(f"{where}: {token!r} is not a number")
    return out


def _shape_from(name: str, value: str) -> CutoutShape:
    if name == "CIRCLE":
        nums = _numbers(value, "CIRCLE")
        if len(nums) != 3:
            raise _usage(f"CIRCLE needs 3 numbers (ra dec radius), got {len(nums)}: {value!r}")
        return CutoutShape.circle(*nums)
    if name == "POLYGON":
        nums = _numbers(value, "POLYGON")
        if len(nums) % 2:
            raise _usage(f"POLYGON needs pairs of numbers (ra dec), got {len(nums)} numbers")
        if len(nums) < 6:
            raise _usage(f"POLYGON needs at least 3 vertices, got {len(nums) // 2}")
        return CutoutShape.polygon(zip(nums[0::2], nums[1::2], strict=True))
    # POS: "<SHAPE> numbers"
    words = value.split(None, 1)
    if not words:
        raise _usage("POS is empty (expected CIRCLE, POLYGON or RANGE followed by numbers)")
    kind = words[0].upper()
    rest = words[1] if len(words) > 1 else ""
    if kind == "RANGE":
        nums = _numbers(rest, "POS RANGE", allow_inf=True)
        if len(nums) != 4:
            raise _usage(f"POS RANGE needs 4 numbers (ra1 ra2 dec1 dec2), got {len(nums)}")
        return CutoutShape.range(*nums)
    if kind in ("CIRCLE", "POLYGON"):
        return _shape_from(kind, rest)
    raise _usage(f"POS shape {words[0]!r} unknown (expected CIRCLE, POLYGON or RANGE)")


def parse_soda_params(params: Iterable[tuple[str, str]]) -> tuple[str, CutoutShape]:
    """``(ID, shape)`` of a SODA sync request; raises :class:`SodaError` (``UsageFault``).

    Parameter names are case-insensitive (DALI).  Exactly one ``ID`` and exactly one shape
    (one ``POS``, ``CIRCLE`` or ``POLYGON``) are required, as at the RSP.  ``RESPONSEFORMAT``
    may ask for FITS only; ``BAND``/``TIME``/``POL`` are refused (2-D images only); ``RUNID``
    and unknown parameters are ignored.
    """
    ids: list[str] = []
    shapes: list[tuple[str, str]] = []
    formats: list[str] = []
    for raw_name, raw_value in params:
        name = raw_name.strip().upper()
        value = raw_value if isinstance(raw_value, str) else str(raw_value)
        if name == "ID":
            ids.append(value.strip())
        elif name in SHAPE_PARAMS:
            shapes.append((name, value.strip()))
        elif name == "RESPONSEFORMAT":
            formats.append(value.strip())
        elif name in UNSUPPORTED_PARAMS:
            raise _usage(f"parameter {name} is not supported by this service (2-D images only)")
    if not ids:
        raise _usage("missing ID: give the ID of exactly one dataset")
    if len(ids) > 1:
        raise _usage(f"{len(ids)} ID values given; this service cuts one ID per request")
    if not ids[0]:
        raise _usage("ID is empty")
    if not shapes:
        raise _usage("missing cutout shape: give exactly one of POS, CIRCLE or POLYGON")
    if len(shapes) > 1:
        names = ", ".join(n for n, _ in shapes)
        raise _usage(
            f"{len(shapes)} shapes given ({names}); this service takes exactly one "
            "POS, CIRCLE or POLYGON per request"
        )
    if len(formats) > 1:
        raise _usage(f"{len(formats)} RESPONSEFORMAT values given, at most one allowed")
    if formats and formats[0].lower() not in FITS_FORMATS:
        raise _usage(f"RESPONSEFORMAT {formats[0]!r} not supported (only application/fits)")
    name, value = shapes[0]
    if not value:
        raise _usage(f"{name} is empty")
    return ids[0], _shape_from(name, value)


# ---------------------------------------------------------------------------
# cutting FITS files


def _celestial_wcs(header: fits.Header, hdul: fits.HDUList) -> WCS | None:
    if header.get("NAXIS") != 2:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)
        try:
            wcs = WCS(header, hdul)
        except Exception:
            return None
    if wcs.naxis != 2 or not wcs.has_celestial:
        return None
    return wcs


def _shift_header(header: fits.Header, x0: int, y0: int) -> fits.Header:
    """Copy of an image header for the sub-image starting at 0-based pixel (x0, y0).

    A pure shift of the pixel grid changes only the reference pixels: ``CRPIXj`` of the
    primary and of every alternate WCS (``CRPIXja``; SIP coefficients are relative to
    CRPIX and stay valid) and IRAF's ``LTVj``.  Everything else is kept verbatim.
    """
    out = header.copy()
    for key in list(out.keys()):
        m = _WCS_SHIFT_KEY.match(key)
        if m and isinstance(out[key], (int, float)) and not isinstance(out[key], bool):
            shift = x0 if m.group(2) == "1" else y0
            out[key] = out[key] - shift
    for key in _CHECKSUM_KEYS:
        out.remove(key, ignore_missing=True, remove_all=True)
    return out


def _fits_text(value: str) -> str:
    """Printable ASCII for a FITS string value."""
    return "".join(c if " " <= c <= "~" else "?" for c in value)


def _set_card(header: fits.Header, key: str, value: str, comment: str) -> None:
    """Set a (HIERARCH) card, dropping the comment if it would not fit."""
    card = fits.Card(key, value, comment)
    with warnings.catch_warnings():
        warnings.simplefilter("error", fits.verify.VerifyWarning)
        try:
            card.image  # noqa: B018 - formats the card, warning if the comment is cut
        except fits.verify.VerifyWarning:
            card = fits.Card(key, value)
    header.append(card, end=True) if key not in header else header.set(key, value, card.comment)


def _set_section(header: fits.Header, rows: slice, cols: slice) -> None:
    section = f"[{cols.start + 1}:{cols.stop},{rows.start + 1}:{rows.stop}]"
    _set_card(header, "HIERARCH SODA SECTION", section, "cut from these pixels")


def write_cutout(
    source_path: str | os.PathLike[str],
    shape: CutoutShape,
    dest_path: str | os.PathLike[str],
    *,
    dataset_id: str | None = None,
) -> None:
    """Write the cutout of ``shape`` from the FITS file ``source_path`` to ``dest_path``.

    Every 2-D image HDU with a celestial WCS is cut to the pixel box of the shape
    (clipped to the image), its WCS reference pixels shifted so that the cutout's WCS
    maps each pixel to the same sky position as before; 2-D images without a WCS but
    the same shape as a cut image (e.g. a MASK written without WCS) get the same box;
    other HDUs (tables, data-less primary) are copied unchanged.  The primary header
    records the request (``SODA ID``, ``SODA SHAPE``).  Pixel data are read through
    ``hdu.section`` (no memmap: that refuses scaled data such as raw uint16), so only the
    cut pixels are read from disk and held in memory.  The file appears at
    ``dest_path`` only when complete.

    Raises :class:`SodaError`: ``NoOverlap`` if the shape misses every image,
    ``UsageFault`` if the file has no image with a celestial WCS, ``NotFoundFault``
    if ``source_path`` does not exist, ``FatalFault`` if it is not readable FITS.
    """
    region = shape.region()
    try:
        hdul = fits.open(source_path, memmap=False, lazy_load_hdus=True)
    except FileNotFoundError:
        raise SodaError(
            "NotFoundFault", f"source file {os.fspath(source_path)!r} not found"
        ) from None
    except OSError as exc:
        raise SodaError("FatalFault", f"cannot read source FITS file: {exc}") from None
    with hdul:
        try:
            hdus = list(hdul)
        except OSError as exc:
            raise SodaError("FatalFault", f"cannot read source FITS file: {exc}") from None
        boxes: dict[int, tuple[slice, slice] | None] = {}
        cache: dict[tuple[str, tuple[int, int]], tuple[slice, slice] | None] = {}
        for i, hdu in enumerate(hdus):
            if not isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)):
                continue
            wcs = _celestial_wcs(hdu.header, hdul)
            if wcs is None:
                continue
            dims = (int(hdu.header["NAXIS2"]), int(hdu.header["NAXIS1"]))
            key = (wcs.to_header_string(relax=True), dims)
            if key not in cache:
                cache[key] = pixel_box(wcs, dims, region)
            boxes[i] = cache[key]
        if not boxes:
            raise _usage("the dataset has no 2-D image with a celestial WCS to cut")
        if all(box is None for box in boxes.values()):
            text = str(shape) if len(str(shape)) <= 120 else str(shape)[:117] + "..."
            raise SodaError("NoOverlap", f"the shape {text} does not overlap the image")
        # WCS-less 2-D images share the box of the first cut image of the same size
        by_dims = {}
        for i, box in boxes.items():
            dims = (int(hdus[i].header["NAXIS2"]), int(hdus[i].header["NAXIS1"]))
            by_dims.setdefault(dims, box)

        out = fits.HDUList()
        for i, hdu in enumerate(hdus):
            out.append(_cut_hdu(i, hdu, boxes, by_dims))
        primary = out[0].header
        if dataset_id is not None:
            _set_card(primary, "HIERARCH SODA ID", _fits_text(dataset_id), "SODA cutout of")
        _set_card(primary, "HIERARCH SODA SHAPE", str(shape), "SODA cutout POS")
        _write_atomically(out, dest_path)


_NO_BOX = object()
"""Marks an HDU that is not cut (as opposed to ``None``: cut, but the shape misses it)."""


def _cut_hdu(
    i: int,
    hdu,
    boxes: dict[int, tuple[slice, slice] | None],
    by_dims: dict[tuple[int, int], tuple[slice, slice] | None],
):
    is_image = isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU))
    box = boxes.get(i, _NO_BOX)
    if box is _NO_BOX and is_image and hdu.header.get("NAXIS") == 2:
        box = by_dims.get((int(hdu.header["NAXIS2"]), int(hdu.header["NAXIS1"])), _NO_BOX)
    if box is _NO_BOX:
        return hdu.copy()
    cls = fits.PrimaryHDU if i == 0 else fits.ImageHDU
    if box is None:  # the shape overlaps other images of the file but not this one
        new = cls(data=None, header=_shift_header(hdu.header, 0, 0))
        _set_card(new.header, "HIERARCH SODA SECTION", "", "no overlap with the shape")
        return new
    rows, cols = box
    data = np.ascontiguousarray(hdu.section[rows, cols])
    header = _shift_header(hdu.header, cols.start, rows.start)
    if data.dtype.kind == "f":
        for key in ("BZERO", "BSCALE", "BLANK"):
            header.remove(key, ignore_missing=True)
    new = cls(data=data, header=header)
    if i == 0 and "EXTEND" in hdu.header and "EXTEND" not in new.header:
        new.header.set(
            "EXTEND", hdu.header["EXTEND"], hdu.header.comments["EXTEND"], after="NAXIS2"
        )
    _set_section(new.header, rows, cols)
    return new


def _write_atomically(hdul: fits.HDUList, dest_path: str | os.PathLike[str]) -> None:
    dest = os.fspath(dest_path)
    fd, tmp = tempfile.mkstemp(prefix=".soda-", suffix=".fits", dir=os.path.dirname(dest) or ".")
    os.close(fd)
    try:
        hdul.writeto(tmp, overwrite=True, output_verify="silentfix")
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
