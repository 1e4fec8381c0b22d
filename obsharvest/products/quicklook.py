"""Pictures a person can check: one image with its target, and the footprints of a search.

:func:`quicklook_png` draws what the seed tutorial draws in §4.1.6 (Figures 2 and 3): the
image in grey scale with ZScale limits, an RA/Dec grid (WCSAxes), the target as an orange
circle, the ``s_region`` polygon transformed to pixel coordinates (purple) - so the padding
of visit regions (seed §1.1) is visible at a glance - and short North (yellow) and East
(cyan) arrows from the image centre. :func:`footprint_map_png` is the seed's Figure 1: the
``s_region`` outlines of every candidate around the target, north up and east left (RA
increasing to the left), coloured by what the header WCS said about them. The gallery
functions write an index of those PNGs (Markdown for Prefect artifacts, static HTML).

Big images are block-averaged to at most ``max_pixels`` per side, read in strips (only a
few rows of the file are in memory at once). The downsampled array is drawn with
``extent`` on the full-resolution WCS, so every overlay stays in the file's own pixel
coordinates: exact, and correct for TAN-SIP headers too (``WCS.slice`` with a step rescales
CRPIX/CDELT but not the SIP polynomials).

Thread-safe: every figure is a :class:`matplotlib.figure.Figure` on its own Agg canvas;
nothing touches ``pyplot`` or its global state. No Prefect and no network here beyond
reading ``fits_source`` (fsspec URLs are read with range requests).
"""

from __future__ import annotations

import gzip
import html
import io
import logging
import math
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import BinaryIO, TypeAlias
from urllib.parse import quote, urlsplit

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from obsharvest.errors import ReadError
from obsharvest.models import Containment, Target, Verdict
from obsharvest.net.compression import is_gzip
from obsharvest.verify.containment import classify_read_failure
from obsharvest.verify.sregion import s_region_outlines

__all__ = [
    "GalleryItem",
    "QuicklookInfo",
    "footprint_map_figure",
    "footprint_map_png",
    "gallery_html",
    "gallery_markdown",
    "quicklook_figure",
    "quicklook_png",
]

log = logging.getLogger(__name__)

FIGSIZE_IN = (6.4, 6.4)
DPI = 100  # 640 x 640 px quicklooks
MAP_FIGSIZE_IN = (6.0, 6.0)
TARGET_COLOUR = "darkorange"  # seed Figure 3
S_REGION_COLOUR = "darkviolet"  # seed Figures 1 and 3
NORTH_COLOUR = "yellow"
EAST_COLOUR = "cyan"
GRID_COLOUR = "#5fbf5f"  # the seed's grey vanishes in zscaled sky noise
VIEW_MARGIN = 0.5  # the view may extend this fraction of the image beyond each edge
NAN_COLOUR = "#3a2a4a"  # NaN pixels (dead amplifiers): dark, not black, not orange
ARROW_FRACTION = 0.15  # N/E arrow length as a fraction of the image's shorter side
STRIP_PIXELS = 4_000_000  # pixels read per strip while block-averaging
VERDICT_STYLES: dict[str, tuple[str, str, str]] = {
    # verdict: (colour, line style, legend label)
    Verdict.CONTAINS.value: ("tab:green", "solid", "true match (pixels contain target)"),
    Verdict.OUTSIDE.value: ("tab:red", "solid", "padding false positive"),
    Verdict.NO_DATA.value: ("tab:orange", "solid", "on the grid, pixel flagged NO_DATA"),
    Verdict.NO_WCS.value: ("tab:gray", "dashed", "error / no WCS"),
    Verdict.ERROR.value: ("tab:gray", "dashed", "error / no WCS"),
}
UNKNOWN_STYLE = ("black", "dotted", "not checked")

FitsSource: TypeAlias = str | os.PathLike | bytes | BinaryIO | fits.HDUList


@dataclass(frozen=True)
class QuicklookInfo:
    """What a quicklook shows and where: enough to check it or to link from a report.

    ``target_pixel`` is the target's 0-based pixel position in HDU ``hdu`` (full
    resolution), ``target_png`` the same point in the PNG (column, row from the top-left),
    both None when the WCS could not place it. ``binning`` is the block-average factor.
    """

    hdu: int
    shape: tuple[int, int]  # (NAXIS1, NAXIS2) of the image HDU
    binning: int
    width: int  # PNG size in pixels
    height: int
    vmin: float
    vmax: float
    target_pixel: tuple[float, float] | None
    target_png: tuple[float, float] | None


# -- reading --------------------------------------------------------------------------


def _open(source: FitsSource, storage_options: dict | None) -> tuple[fits.HDUList, bool]:
    """``(hdul, close_it)``: URLs through fsspec (range reads), local files memory-mapped."""
    if isinstance(source, fits.HDUList):
        return source, False
    if isinstance(source, bytes):
        if is_gzip(source):  # a stored .fits.gz: astropy finds gzip only in named files
            source = gzip.decompress(source)
        return fits.open(io.BytesIO(source), lazy_load_hdus=True), True
    if isinstance(source, (str, os.PathLike)):
        name = os.fspath(source)
        if "://" in name and not name.startswith("file://"):
            options = {"block_size": 1 << 20, **(storage_options or {})}
            return fits.open(
                name, use_fsspec=True, lazy_load_hdus=True, fsspec_kwargs=options
            ), True
        return fits.open(name, memmap=True, lazy_load_hdus=True), True
    return fits.open(source, lazy_load_hdus=True), True


def _celestial_wcs(header: fits.Header) -> WCS | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            wcs = WCS(header)
        except Exception:  # noqa: BLE001 - an unusable WCS means "not this HDU"
            return None
    return wcs if wcs.has_celestial and wcs.naxis == 2 else None


class _NoImageError(ValueError):
    """Nothing to draw: a ValueError for callers, never reclassified as a read error."""


def _image_hdu(hdul: fits.HDUList) -> tuple[int, fits.hdu.base.ExtensionHDU, WCS]:
    """The first 2-D image HDU with pixels and a celestial WCS (a calexp's ``hdul[1]``)."""
    index = 0
    while True:
        try:
            hdu = hdul[index]
        except IndexError:
            break
        if isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)):
            shape = getattr(hdu, "shape", ())
            if len(shape) == 2 and min(shape) > 0:
                wcs = _celestial_wcs(hdu.header)
                if wcs is not None:
                    return index, hdu, wcs
        index += 1
    raise _NoImageError("no 2-D image HDU with a celestial WCS")


def _block_average(hdu, factor: int) -> np.ndarray:
    """Mean of each ``factor`` x ``factor`` block, ignoring NaN; partial edge blocks too.

    Reads ``hdu.section`` in strips of whole blocks so only a strip is in memory (a
    memory map locally, range reads over fsspec). BZERO/BSCALE are applied by astropy.
    """
    ny, nx = hdu.shape
    if factor == 1:
        return np.asarray(hdu.section[:, :], dtype=np.float32)
    nbx, nby = -(-nx // factor), -(-ny // factor)
    out = np.empty((nby, nbx), dtype=np.float32)
    rows_per_strip = max(1, STRIP_PIXELS // (nx * factor)) * factor
    for r0 in range(0, ny, rows_per_strip):
        r1 = min(ny, r0 + rows_per_strip)
        strip = np.asarray(hdu.section[r0:r1, :], dtype=np.float32)
        full_rows = -(-(r1 - r0) // factor) * factor
        padded = np.full((full_rows, nbx * factor), np.nan, dtype=np.float32)
        padded[: r1 - r0, :nx] = strip
        blocks = padded.reshape(full_rows // factor, factor, nbx, factor)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks stay NaN
            out[r0 // factor : r0 // factor + full_rows // factor] = np.nanmean(blocks, axis=(1, 3))
    return out


def _zscale(image: np.ndarray) -> tuple[float, float]:
    from astropy.visualization import ZScaleInterval

    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return 0.0, 1.0
    vmin, vmax = ZScaleInterval().get_limits(finite)
    if not vmax > vmin:
        vmax = vmin + 1.0
    return float(vmin), float(vmax)


# -- drawing a quicklook --------------------------------------------------------------


def _to_pixel(wcs: WCS, ra, dec) -> tuple[np.ndarray, np.ndarray] | None:
    """ICRS degrees to 0-based pixels of ``wcs`` (any celestial frame; SIP-aware)."""
    from astropy.coordinates import SkyCoord

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            x, y = wcs.world_to_pixel(SkyCoord(ra, dec, unit="deg", frame="icrs"))
    except Exception:  # noqa: BLE001 - NoConvergence, singular matrix: just skip
        return None
    x, y = np.atleast_1d(np.asarray(x, float)), np.atleast_1d(np.asarray(y, float))
    return (x, y) if np.all(np.isfinite(x)) and np.all(np.isfinite(y)) else None


def _compass(ax, wcs: WCS, nx: int, ny: int) -> None:
    """North (yellow) and East (cyan) arrows from the image centre, as seed Figure 3."""
    import astropy.units as u
    from astropy.coordinates import ICRS
    from astropy.wcs.utils import proj_plane_pixel_scales

    cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
    try:
        centre = wcs.pixel_to_world(cx, cy).transform_to(ICRS())
        scale = float(np.mean(proj_plane_pixel_scales(wcs)))  # deg per pixel
    except Exception:  # noqa: BLE001 - no compass is better than no quicklook
        return
    length = ARROW_FRACTION * min(nx, ny) * scale * u.deg
    for angle, colour, letter in ((0.0, NORTH_COLOUR, "N"), (90.0, EAST_COLOUR, "E")):
        tip = centre.directional_offset_by(angle * u.deg, length)
        pixel = _to_pixel(wcs, tip.ra.deg, tip.dec.deg)
        if pixel is None:
            continue
        tx, ty = float(pixel[0][0]), float(pixel[1][0])
        ax.annotate(
            "",
            xy=(tx, ty),
            xytext=(cx, cy),
            arrowprops={"arrowstyle": "-|>", "color": colour, "lw": 1.5},
        )
        # the letter a little beyond the tip, along the arrow
        lx, ly = cx + 1.3 * (tx - cx), cy + 1.3 * (ty - cy)
        ax.text(lx, ly, letter, color=colour, ha="center", va="center", fontweight="bold")


def _set_view(ax, points: list[tuple[float, float]], nx: int, ny: int) -> None:
    """The image plus the s_region padding and the target (seed Figure 3 shows both), but
    never more than ``VIEW_MARGIN`` of the image beyond an edge: a far target stays off."""
    xs, ys = np.array(points, dtype=float).T
    mx, my = VIEW_MARGIN * nx, VIEW_MARGIN * ny
    pad = 0.02 * max(nx, ny)
    x0 = max(float(np.min(xs)) - pad, -0.5 - mx)
    x1 = min(float(np.max(xs)) + pad, nx - 0.5 + mx)
    y0 = max(float(np.min(ys)) - pad, -0.5 - my)
    y1 = min(float(np.max(ys)) + pad, ny - 0.5 + my)
    ax.set_xlim(min(x0, -0.5), max(x1, nx - 0.5))
    ax.set_ylim(min(y0, -0.5), max(y1, ny - 0.5))


def _caption(target: Target, containment: Containment | None, title: str | None) -> str:
    head = title or target.name
    if containment is None:
        return head
    detail = containment.verdict.value
    if containment.x is not None and containment.y is not None:
        detail += f" at pixel ({containment.x:.1f}, {containment.y:.1f})"
    return f"{head}\n{detail}"


def _read_image(
    fits_source: FitsSource, storage_options: dict | None, max_pixels: int
) -> tuple[int, WCS, int, int, int, np.ndarray]:
    """``(hdu index, wcs, nx, ny, factor, image)``: the image block-averaged to fit.

    Read failures of a path or URL become the containment read errors, so a quicklook
    fails the way a containment check of the same file would.
    """
    try:
        hdul, close = _open(fits_source, storage_options)
        try:
            index, hdu, wcs = _image_hdu(hdul)
            ny, nx = hdu.shape
            factor = max(1, math.ceil(max(nx, ny) / max_pixels))
            image = _block_average(hdu, factor)
        finally:
            if close:
                hdul.close()
    except (ReadError, _NoImageError):
        raise
    except Exception as exc:  # noqa: BLE001 - HTTP/IO failures get the containment types
        where = fits_source if isinstance(fits_source, (str, os.PathLike)) else None
        classified = classify_read_failure(exc, os.fspath(where)) if where is not None else None
        if classified is None:
            raise
        raise classified from None
    return index, wcs, nx, ny, factor, image


def _image_axes(wcs: WCS, image: np.ndarray, factor: int, vmin: float, vmax: float):
    """``(figure, axes)``: the grey-scale image on its own Agg canvas, with an RA/Dec grid.

    ``extent`` maps the block-averaged array onto full-resolution pixels, so overlays can
    use the file's own pixel coordinates.
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE_IN, dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(projection=wcs)
    fig.subplots_adjust(left=0.17, right=0.96, bottom=0.1, top=0.9)
    cmap = colormaps["gray"].with_extremes(bad=NAN_COLOUR)
    nby, nbx = image.shape
    ax.imshow(
        image,
        cmap=cmap,
        vmin=vmin,
        vmax=vmax,
        origin="lower",
        interpolation="nearest",
        extent=(-0.5, nbx * factor - 0.5, -0.5, nby * factor - 0.5),
    )
    ax.coords.grid(color=GRID_COLOUR, ls="solid", lw=0.7, alpha=0.8)
    for coord in ax.coords:
        if coord.coord_type == "longitude":
            coord.set_axislabel("RA")
            coord.set_major_formatter("hh:mm:ss")
        elif coord.coord_type == "latitude":
            coord.set_axislabel("Dec")
            coord.set_major_formatter("dd:mm")
    return fig, ax


def _draw_s_region(
    ax, wcs: WCS, s_region: str | None, target_name: str
) -> list[tuple[float, float]]:
    """Draw every outline of ``s_region``; returns the pixel points drawn (for the view).

    A union's pieces and a circle have outlines; a point or an unusable value has none
    (the WCS decided containment anyway).
    """
    outlines = s_region_outlines(s_region) if s_region else []
    if s_region and not outlines:
        log.debug("quicklook of %s: s_region has no outline to draw", target_name)
    drawn: list[tuple[float, float]] = []
    for vertices in outlines:
        ra, dec = np.array(vertices).T
        pixels = _to_pixel(wcs, ra, dec)
        if pixels is not None:
            xs, ys = (np.append(p, p[0]) for p in pixels)
            ax.plot(xs, ys, color=S_REGION_COLOUR, lw=1.2)
            drawn += list(zip(xs, ys, strict=True))
    return drawn


def _target_pixel(
    wcs: WCS, target: Target, containment: Containment | None
) -> tuple[float, float] | None:
    """Where the target is in the file's pixels: the WCS first, else the containment's
    position (it may have placed what this WCS cannot), else None."""
    placed = _to_pixel(wcs, target.ra, target.dec)
    if placed is not None:
        return (float(placed[0][0]), float(placed[1][0]))
    if containment is not None and containment.x is not None and containment.y is not None:
        return (containment.x, containment.y)
    return None


def _draw_target(ax, target: Target, target_pixel: tuple[float, float] | None) -> None:
    """The target as an orange circle (seed Figure 3), and its search radius on the sky."""
    if target_pixel is None:
        log.warning("quicklook of %s: the WCS cannot place the target", target.name)
    else:
        ax.plot(*target_pixel, "o", ms=12, mew=2, mfc="none", mec=TARGET_COLOUR)
    if target.radius:
        import astropy.units as u
        from astropy.visualization.wcsaxes import SphericalCircle

        ax.add_patch(
            SphericalCircle(
                (target.ra * u.deg, target.dec * u.deg),
                target.radius * u.deg,
                edgecolor=TARGET_COLOUR,
                facecolor="none",
                lw=1.2,
                ls="dashed",
                transform=ax.get_transform("icrs"),
            )
        )


def _png_position(
    fig, ax, target_pixel: tuple[float, float] | None
) -> tuple[int, int, tuple[float, float] | None]:
    """``(width, height, target_png)`` after drawing: the PNG's size and where the target
    lands in it (column, row from the top-left), for links from a report."""
    fig.canvas.draw()
    width, height = (int(round(v)) for v in fig.bbox.size)
    if target_pixel is None:
        return width, height, None
    dx, dy = ax.transData.transform(target_pixel)
    return width, height, (float(dx), float(height - dy))


def quicklook_figure(
    fits_source: FitsSource,
    target: Target,
    s_region: str | None,
    *,
    containment: Containment | None = None,
    title: str | None = None,
    max_pixels: int = 1024,
    storage_options: dict | None = None,
):
    """``(figure, info)``: the quicklook as a Matplotlib ``Figure`` on an Agg canvas.

    Raises ValueError when no HDU has 2-D pixels and a celestial WCS, and the
    :mod:`obsharvest.verify.containment` read errors (``TransientReadError``, ``UrlExpiredError``,
    ``NotFoundError``, ...) when a path or URL cannot be read. A target or ``s_region``
    the WCS cannot place is left out (and logged), not an error.
    """
    if max_pixels < 1:
        raise ValueError(f"max_pixels={max_pixels} must be at least 1")
    index, wcs, nx, ny, factor, image = _read_image(fits_source, storage_options, max_pixels)
    vmin, vmax = _zscale(image)
    fig, ax = _image_axes(wcs, image, factor, vmin, vmax)
    shown = [(-0.5, -0.5), (nx - 0.5, ny - 0.5)]  # what the view must include
    shown += _draw_s_region(ax, wcs, s_region, target.name)
    _compass(ax, wcs, nx, ny)
    target_pixel = _target_pixel(wcs, target, containment)
    _draw_target(ax, target, target_pixel)
    if target_pixel is not None:
        shown.append(target_pixel)
    ax.set_title(_caption(target, containment, title), fontsize=9)
    _set_view(ax, shown, nx, ny)
    width, height, target_png = _png_position(fig, ax, target_pixel)
    info = QuicklookInfo(
        hdu=index,
        shape=(nx, ny),
        binning=factor,
        width=width,
        height=height,
        vmin=vmin,
        vmax=vmax,
        target_pixel=target_pixel,
        target_png=target_png,
    )
    return fig, info


def quicklook_png(
    fits_source: FitsSource,
    target: Target,
    s_region: str | None,
    out: BinaryIO | str | os.PathLike,
    *,
    containment: Containment | None = None,
    title: str | None = None,
    max_pixels: int = 1024,
    storage_options: dict | None = None,
) -> QuicklookInfo:
    """Write the seed's Figure 3 for ``target`` on ``fits_source`` as a PNG to ``out``.

    ``fits_source``: a path, an fsspec URL (``storage_options`` go to fsspec), bytes, a
    binary file object or an open ``HDUList``. ``containment`` adds the verdict (and the
    pixel position it found) to the title.
    """
    fig, info = quicklook_figure(
        fits_source,
        target,
        s_region,
        containment=containment,
        title=title,
        max_pixels=max_pixels,
        storage_options=storage_options,
    )
    fig.savefig(out, format="png", dpi=DPI)
    return info


# -- footprint map (seed Figure 1) ----------------------------------------------------


def _unwrap(ra: np.ndarray, centre: float) -> np.ndarray:
    """RA within 180 deg of ``centre``, so polygons across RA = 0 stay in one piece."""
    return centre + (np.asarray(ra) - centre + 180.0) % 360.0 - 180.0


def _draw_footprint(
    ax,
    outlines: list[list[tuple[float, float]]],
    centre_ra: float,
    style: tuple[str, str],
    coadd: bool,
    label: str,
) -> None:
    """One region's outlines, RA unwrapped about ``centre_ra``; a coadd's thicker, with
    its ``label`` (``tract_patch``) at the centre so patches can be told apart."""
    colour, line_style = style
    for vertices in outlines:
        ra, dec = np.array(vertices).T
        ra = _unwrap(ra, centre_ra)
        ax.plot(
            np.append(ra, ra[0]),
            np.append(dec, dec[0]),
            color=colour,
            ls=line_style,
            lw=1.8 if coadd else 0.9,
            alpha=0.8 if coadd else 0.5,
        )
    if coadd and label:
        ra, dec = np.array([v for outline in outlines for v in outline]).T
        ra = _unwrap(ra, centre_ra)
        ax.text(
            float(np.mean(ra)),
            float(np.mean(dec)),
            str(label),
            ha="center",
            va="center",
            fontsize=7,
        )


def _sky_axes(ax, target: Target, title: str) -> None:
    """The target as a dot, north up and east left, axes scaled so the sky is not stretched."""
    from matplotlib.ticker import FuncFormatter

    ax.plot(target.ra, target.dec, "o", ms=5, mew=0, color="black")
    ax.invert_xaxis()  # east left: RA increases to the left (seed §3.7)
    ax.set_aspect(1.0 / max(math.cos(math.radians(target.dec)), 1e-3), adjustable="datalim")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v % 360.0:.6g}"))
    ax.set_xlabel("Right Ascension [degrees]")
    ax.set_ylabel("Declination [degrees]")
    ax.set_title(title, fontsize=9)


def _map_legend(ax, used: dict[str, tuple[str, str]], target_name: str) -> None:
    """One legend entry per verdict style drawn, then the target."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c, ls=s, label=legend) for legend, (c, s) in used.items()]
    handles.append(
        Line2D([], [], color="black", marker="o", ls="none", ms=5, label=f"{target_name}")
    )
    ax.legend(handles=handles, fontsize=7, loc="best", framealpha=0.8)


def footprint_map_figure(
    target: Target,
    regions: Sequence[tuple[str, str, str | None, str]],
    *,
    title: str | None = None,
):
    """Seed Figure 1 as a ``Figure``: north up, east left, one outline per region.

    ``regions`` are ``(s_region, label, verdict, kind)``: the verdict (a
    :class:`~obsharvest.models.Verdict` value, or None when unchecked) picks the colour;
    a ``kind`` containing "coadd" (``lsst.deepCoadd_calexp``, ``lsst.deep_coadd``, ...)
    draws a thicker line and writes ``label`` (``tract_patch``) at its centre. An
    ``s_region`` is STC-S text or a DALI array; a union draws each member. Unparseable
    values and points are counted in a footnote, not drawn.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=MAP_FIGSIZE_IN, dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    used: dict[str, tuple[str, str]] = {}
    skipped = 0
    for s_region, label, verdict, kind in regions:
        outlines = s_region_outlines(s_region)  # a union draws each member
        if not outlines:
            skipped += 1
            continue
        colour, style, legend = VERDICT_STYLES.get(str(verdict or ""), UNKNOWN_STYLE)
        used.setdefault(legend, (colour, style))
        coadd = "coadd" in str(kind or "").lower()
        _draw_footprint(ax, outlines, target.ra, (colour, style), coadd, label)
    _sky_axes(ax, target, title or f"{target.name}: s_region of {len(regions)} candidates")
    _map_legend(ax, used, target.name)
    if skipped:
        fig.text(0.01, 0.01, f"{skipped} unreadable s_region not drawn", fontsize=7)
    return fig


def footprint_map_png(
    target: Target,
    regions: Sequence[tuple[str, str, str | None, str]],
    out: BinaryIO | str | os.PathLike,
    *,
    title: str | None = None,
) -> None:
    """Write :func:`footprint_map_figure` as a PNG to ``out``."""
    footprint_map_figure(target, regions, title=title).savefig(out, format="png", dpi=DPI)


# -- gallery --------------------------------------------------------------------------


@dataclass(frozen=True)
class GalleryItem:
    """One quicklook in an index: links are relative to the index file (or http(s))."""

    target: str
    png: str
    fits: str | None = None
    title: str | None = None  # e.g. the obs_id and subtype
    verdict: str | None = None


_MARKDOWN_SPECIAL = set("\\`*_{}[]()#+-.!|~<>&")


def _href(link: str) -> str:
    """A safe link: http(s) URLs as they are, anything else as a percent-encoded path.

    A relative path can never become ``javascript:``/``data:``: the colon is encoded.
    """
    link = str(link).replace("\\", "/")
    scheme = urlsplit(link).scheme.lower() if ":" in link else ""
    if scheme in ("http", "https"):
        return quote(link, safe=":/?&=#%+@,;~-._!*'$")
    return quote(link, safe="/-._~")


def _md(text: object) -> str:
    flat = " ".join(str(text).split())
    escaped = "".join(f"\\{c}" if c in _MARKDOWN_SPECIAL and c not in "<>&" else c for c in flat)
    return html.escape(escaped, quote=False)


def _grouped(items: Iterable[GalleryItem]) -> dict[str, list[GalleryItem]]:
    groups: dict[str, list[GalleryItem]] = {}
    for item in items:
        groups.setdefault(item.target, []).append(item)
    return groups


def gallery_markdown(items: Iterable[GalleryItem], *, title: str = "Quicklooks") -> str:
    """A Markdown index (Prefect artifacts render it): one section per target, all text
    escaped so names with ``<script>``, ``|`` or ``[`` show as typed."""
    lines = [f"# {_md(title)}", ""]
    for target, group in _grouped(items).items():
        lines += [
            f"## {_md(target)}",
            "",
            "| quicklook | image | verdict | FITS |",
            "|---|---|---|---|",
        ]
        for item in group:
            name = item.title or os.path.basename(item.png)
            fits_link = f"[FITS]({_href(item.fits)})" if item.fits else ""
            lines.append(
                f"| ![{_md(name)}]({_href(item.png)}) | {_md(name)} | "
                f"{_md(item.verdict or '')} | {fits_link} |"
            )
        lines.append("")
    return "\n".join(lines)


_HTML_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; background: #fafafa; }
section { margin-bottom: 2em; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; width: 320px; }
figure img { width: 320px; height: auto; border: 1px solid #ccc; }
figcaption { font-size: 0.85em; word-break: break-all; }
.verdict { font-weight: bold; }
""".strip()


def gallery_html(items: Iterable[GalleryItem], *, title: str = "obsharvest quicklooks") -> str:
    """A static HTML page (no scripts, no external resources) linking each PNG and FITS.

    Every text is HTML-escaped and every link percent-encoded (see :func:`_href`), so
    target names and obs_ids from user files cannot inject markup.
    """
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{esc(title)}</title>",
        f"<style>\n{_HTML_STYLE}\n</style>",
        "</head>",
        "<body>",
        f"<h1>{esc(title)}</h1>",
    ]
    for target, group in _grouped(items).items():
        parts += ["<section>", f"<h2>{esc(target)}</h2>"]
        for item in group:
            name = item.title or os.path.basename(item.png)
            png = esc(_href(item.png))
            caption = [esc(name)]
            if item.verdict:
                caption.append(f'<span class="verdict">{esc(item.verdict)}</span>')
            if item.fits:
                caption.append(f'<a href="{esc(_href(item.fits))}">FITS</a>')
            parts += [
                "<figure>",
                f'<a href="{png}"><img src="{png}" alt="{esc(name)}" loading="lazy"></a>',
                f"<figcaption>{' &middot; '.join(caption)}</figcaption>",
                "</figure>",
            ]
        parts.append("</section>")
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)
