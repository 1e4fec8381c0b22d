"""The synthetic survey: visits x focal plane + one tract of coadds, as archive products.

:class:`Sky` is what the embedded archive serves.  It is a pure function of
:class:`SkyConfig`: the visit list, detector footprints, coadd patches, identifiers,
ObsCore rows, FITS files and the "truth" (which images really contain a point) are all
derived deterministically from the seed.

Visit-image ``s_region``s are deliberately *not* the image footprint: like Rubin's DP0.2
(seed §1.1, §3.5, §4.1) they come from the nominal camera geometry at the boresight,
padded by ~250 px (~50"), while the header WCS carries a small astrometric offset.  Point
queries therefore return detectors that do not contain the point, and two neighbouring
detectors of one visit near their common edge.  :meth:`Sky.truth` is the WCS answer.

The release table (:mod:`obsharvest.simarchive.sky.naming`) picks the camera, survey shape and skymap.
With DP1's LSSTComCam the optics distort the focal plane by a few pixels; calibrated
visit images then carry a TAN-SIP header fitted to that distortion (CRPIX at the
detector centre, as Rubin writes them), and :meth:`Sky.truth` decides containment with
exactly those header numbers, inverting SIP the way ``astropy.wcs`` does.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from functools import cached_property
from typing import Final

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from obsharvest.simarchive.sky import fitsgen
from obsharvest.simarchive.sky.focalplane import (
    N_AMP_X,
    N_AMP_Y,
    PIXEL_SCALE_ARCSEC,
    PIXEL_SIZE_MM,
    PLATE_SCALE_DEG_PER_MM,
    SENSOR_NX,
    SENSOR_NY,
    binned_shape,
    distort_mm,
    get_camera,
)
from obsharvest.simarchive.sky.naming import (
    BANDS,
    COADD_KINDS,
    DEEP_COADD,
    DIFF,
    RAW,
    TEMPLATE_COADD,
    VISIT_KINDS,
    check_authority,
    get_naming,
    visit_name,
    with_authority,
)
from obsharvest.simarchive.sky.pixels import PixelRecipe
from obsharvest.simarchive.sky.product import Product
from obsharvest.simarchive.sky.projection import (
    Sip,
    TanWcs,
    angular_separation,
    enclosing_diameter,
    fit_sip_inverse,
    fit_tan_sip_batch,
    format_polygons,
    polygon_ccw,
    rotation_matrix,
    sip_solve,
    sip_terms,
    sky_to_tangent,
    tangent_to_sky,
)
from obsharvest.simarchive.sky.skymap import SKYMAPS, Tract, binned_crpix, place_tract
from obsharvest.simarchive.sky.starfield import StarField, make_starfield
from obsharvest.simarchive.sky.visits import Visits, make_visits

__all__ = ["Product", "Sky", "SkyConfig"]

S_REGION_PADDING_PX: Final = 250
"""Rubin pads visit-image s_regions by ~250 px (~50"; seed §1.1)."""
KEEP_RADIUS_DEG: Final = 2.5
"""Detector-visits whose padded region lies entirely beyond this are dropped."""
ASTROMETRIC_OFFSET_ARCSEC: Final = 0.7
"""Per-axis sigma of the WCS offset from the nominal camera geometry (~1" total)."""
DEAD_AMP_FRACTION: Final = 1.0 / 8.0
GOOD_SEEING_FRACTION: Final = 0.3
"""goodSeeingCoadd uses the best 30% of visits by seeing (seed §3.2)."""
COADD_PSF_INFLATION: Final = 1.1
TRUTH_EDGE_RECHECK_PX: Final = 1e-3
"""Points this close to a pixel-grid edge are re-decided with astropy.wcs."""
SIP_ORDER: Final = 3
"""A radial cubic re-expanded about the detector centre is exactly a cubic polynomial."""
SIP_INVERSE_ORDER: Final = 4
SIP_FIT_GRID: Final = 11
"""Grid points per axis for the TAN-SIP least-squares fit (pixel edges included)."""
SIP_SOLVE_BOX: Final = 1.0
"""Only points within this many image sizes of an image are SIP-inverted for truth."""
UUID_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/obsharvest/simarchive")

# Photometric model, per band: zero point (mag giving 1 ADU in 30 s), sky ADU/px in 30 s.
ZERO_POINT_30S: Final = {"u": 26.5, "g": 28.3, "r": 28.1, "i": 27.8, "z": 27.4, "y": 26.6}
SKY_ADU_30S: Final = {"u": 80.0, "g": 380.0, "r": 800.0, "i": 1200.0, "z": 1800.0, "y": 2000.0}
READ_NOISE_ADU: Final = 9.0
RAW_BIAS_ADU: Final = 1000.0
NJY_ZERO_POINT: Final = 31.4
"""AB magnitude of 1 nJy: coadds are in nJy like DP0.2 deepCoadds."""
DIFF_NOISE_INFLATION: Final = 1.2
DIFF_RESIDUAL_FRACTION: Final = 0.02
EDGE_PX_UNBINNED: Final = 8

STREAM_ASTROMETRY: Final = 3
STREAM_DEAD_AMPS: Final = 4


def uuid5_str(name: str) -> str:
    """``str(uuid.uuid5(UUID_NAMESPACE, name))``, inlined: ~65k of these per build."""
    h = bytearray(hashlib.sha1(UUID_NAMESPACE.bytes + name.encode()).digest()[:16])
    h[6] = (h[6] & 0x0F) | 0x50
    h[8] = (h[8] & 0x3F) | 0x80
    x = h.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def _distorted(xy: np.ndarray, k: float) -> np.ndarray:
    """Focal-plane points (..., 2) in mm moved by the optics; the same array when k == 0."""
    if k == 0.0:
        return xy
    x, y = distort_mm(xy[..., 0], xy[..., 1], k)
    return np.stack([x, y], axis=-1)


@dataclass(frozen=True)
class SkyConfig:
    """Everything the synthetic archive depends on."""

    seed: int = 42
    n_visits: int = 120
    binning: int = 10
    """1 = real size (4072x4000 calexp, ~195 MB); 10 = 407x400.  The sky footprint does
    not depend on it: the pixel scale is 0.2" x binning."""
    naming: str = "dp02"
    field_ra: float = 62.0
    field_dec: float = -37.0
    extra_visits: int = 0
    """Visits observed after the survey ("time moves on"); the others stay unchanged."""
    publisher: str | None = None
    """IVOA authority the products are published under (``mirror.example``): a mirror's
    DIDs (and ``ivo://`` Datalink IDs) for the same images, files and obs_ids. None: the
    release's own; the release's DID stays each product's ``obs_creator_did``."""

    def __post_init__(self) -> None:
        if self.publisher is not None:
            check_authority(self.publisher)
        if self.extra_visits < 0:
            raise ValueError("extra_visits must be >= 0")
        if self.binning < 1:
            raise ValueError("binning must be >= 1")
        if self.n_visits < 1:
            raise ValueError("n_visits must be >= 1")
        get_naming(self.naming)


@dataclass(frozen=True)
class _DetectorVisits:
    """Columnar table of the kept detector-visits (visit-major, then detector)."""

    visit_index: np.ndarray
    detector: np.ndarray
    s_ra: np.ndarray
    s_dec: np.ndarray
    s_fov: np.ndarray
    s_region: list[str]
    wcs_ra: np.ndarray
    """CRVAL of the calibrated (calexp/difference) WCS: boresight + astrometric offset."""
    wcs_dec: np.ndarray
    dead_amp: np.ndarray
    """Dead amplifier index, -1 for none."""


class Sky:
    """The deterministic synthetic archive content for one :class:`SkyConfig`."""

    def __init__(self, config: SkyConfig) -> None:
        self.config = config
        self.naming = get_naming(config.naming)
        self.camera = get_camera(self.naming.survey.camera)
        self.visits: Visits = make_visits(
            config.seed,
            config.n_visits,
            config.field_ra,
            config.field_dec,
            self.naming.survey,
            extra_visits=config.extra_visits,
        )
        self.tract: Tract = place_tract(
            self.naming.tract, config.field_ra, config.field_dec, SKYMAPS[self.naming.skymap]
        )
        self._cd_unbinned = self._visit_cd_matrices()
        self._dv = self._build_detector_visits()
        self._columns = self._build_columns()
        self._index = {pid: i for i, pid in enumerate(self._columns["id"])}
        self._sizes: dict[str, int] = {}  # product id -> fits_size, made once

    # ----------------------------------------------------------------- geometry
    def _visit_cd_matrices(self) -> np.ndarray:
        """(n_visits, 2, 2) deg per unbinned pixel from detector pixel axes to (xi, eta).

        Focal-plane +x maps to west at rotation 0 (sky parity: RA increases to the left,
        CD1_1 < 0), then the camera rotates by the visit's angle.
        """
        parity = np.diag([-1.0, 1.0])
        rot = rotation_matrix(self.visits.rotation_deg)
        return PLATE_SCALE_DEG_PER_MM * PIXEL_SIZE_MM * np.einsum("ij,vjk->vik", parity, rot)

    def _build_detector_visits(self) -> _DetectorVisits:
        """Nominal (distorted camera geometry at the boresight) regions of every detector."""
        v = self.visits
        nv, centres = len(v), self.camera.centres_mm()
        nd = len(centres)
        k = self.camera.distortion_per_mm2
        cd_mm = self._cd_unbinned / PIXEL_SIZE_MM  # deg per mm
        centre_tp = np.einsum("vij,dj->vdi", cd_mm, _distorted(centres, k))
        hx = (SENSOR_NX / 2.0 + S_REGION_PADDING_PX) * PIXEL_SIZE_MM
        hy = (SENSOR_NY / 2.0 + S_REGION_PADDING_PX) * PIXEL_SIZE_MM
        offsets = np.array([(-hx, -hy), (hx, -hy), (hx, hy), (-hx, hy)])
        corners = _distorted(centres[:, None, :] + offsets[None], k)
        corner_tp = np.einsum("vij,dkj->vdki", cd_mm, corners)
        b_ra, b_dec = v.ra[:, None], v.dec[:, None]
        c_ra, c_dec = tangent_to_sky(b_ra, b_dec, centre_tp[..., 0], centre_tp[..., 1])
        k_ra, k_dec = tangent_to_sky(
            b_ra[..., None], b_dec[..., None], corner_tp[..., 0], corner_tp[..., 1]
        )
        radius = np.max(angular_separation(c_ra[..., None], c_dec[..., None], k_ra, k_dec), axis=-1)
        dist = angular_separation(self.config.field_ra, self.config.field_dec, c_ra, c_dec)
        keep = (dist - radius) < KEEP_RADIUS_DEG

        rng = np.random.default_rng(np.random.SeedSequence([self.config.seed, STREAM_ASTROMETRY]))
        off = rng.normal(0.0, ASTROMETRIC_OFFSET_ARCSEC / 3600.0, size=(nv, nd, 2))
        w_ra, w_dec = tangent_to_sky(b_ra, b_dec, off[..., 0], off[..., 1])
        rng = np.random.default_rng(np.random.SeedSequence([self.config.seed, STREAM_DEAD_AMPS]))
        dead = np.where(
            rng.uniform(size=(nv, nd)) < DEAD_AMP_FRACTION,
            rng.integers(0, N_AMP_X * N_AMP_Y, size=(nv, nd)),
            -1,
        )

        vi, di = np.nonzero(keep)
        ra_k, dec_k = polygon_ccw(k_ra[vi, di], k_dec[vi, di])
        return _DetectorVisits(
            visit_index=vi.astype(np.int32),
            detector=di.astype(np.int16),
            s_ra=c_ra[vi, di],
            s_dec=c_dec[vi, di],
            s_fov=enclosing_diameter(c_ra[vi, di], c_dec[vi, di], ra_k, dec_k),
            s_region=format_polygons(ra_k, dec_k),
            wcs_ra=w_ra[vi, di],
            wcs_dec=w_dec[vi, di],
            dead_amp=dead[vi, di].astype(np.int8),
        )

    def _detector_crpix(self, vi: np.ndarray | int, det: np.ndarray | int) -> tuple:
        """1-based binned CRPIX: the boresight's position on the detector's pixel grid."""
        del vi  # the boresight sits at the same focal-plane point for every rotation
        centres = np.asarray(self.camera.centres_mm()[det])
        # unbinned 0-based pixel of the focal-plane origin (boresight) on this detector
        u0 = (SENSOR_NX - 1) / 2.0 - centres[..., 0] / PIXEL_SIZE_MM
        v0 = (SENSOR_NY - 1) / 2.0 - centres[..., 1] / PIXEL_SIZE_MM
        b = self.config.binning
        return binned_crpix(u0, b), binned_crpix(v0, b)

    def _detector_wcs(self, dv: int, calibrated: bool) -> TanWcs:
        """Header WCS of a detector-visit image: nominal for raws, offset for calexps."""
        if calibrated and self.naming.survey.sip_headers:
            return self._sip_wcs(dv)
        vi, det = int(self._dv.visit_index[dv]), int(self._dv.detector[dv])
        crpix1, crpix2 = self._detector_crpix(vi, det)
        cd = self._cd_unbinned[vi] * self.config.binning
        if calibrated:
            crval = (float(self._dv.wcs_ra[dv]), float(self._dv.wcs_dec[dv]))
        else:
            crval = (float(self.visits.ra[vi]), float(self.visits.dec[vi]))
        return TanWcs(
            crval=crval,
            crpix=(float(crpix1), float(crpix2)),
            cd=((float(cd[0, 0]), float(cd[0, 1])), (float(cd[1, 0]), float(cd[1, 1]))),
            naxis=binned_shape(self.config.binning),
        )

    # ----------------------------------------------------------------- TAN-SIP
    def _calibrated_sky(
        self, dv: np.ndarray, u: np.ndarray, v: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The astrometric solution: binned 0-based pixels of detector-visits -> RA/Dec.

        Pixel -> focal plane (mm) -> optical distortion -> the visit's rotation and plate
        scale -> gnomonic about the offset boresight (``wcs_ra``/``wcs_dec``).  Without
        distortion this is exactly the plain-TAN calexp WCS of :meth:`_detector_wcs`.
        ``dv`` has shape (n,), ``u``/``v`` shape (n, G) or (G,).
        """
        b = self.config.binning
        vi, det = self._dv.visit_index[dv], self._dv.detector[dv]
        centres = self.camera.centres_mm()[det]
        x = centres[:, 0:1] + (b * u + (b - 1) / 2.0 - (SENSOR_NX - 1) / 2.0) * PIXEL_SIZE_MM
        y = centres[:, 1:2] + (b * v + (b - 1) / 2.0 - (SENSOR_NY - 1) / 2.0) * PIXEL_SIZE_MM
        x, y = distort_mm(x, y, self.camera.distortion_per_mm2)
        cd_mm = self._cd_unbinned[vi] / PIXEL_SIZE_MM
        xi = cd_mm[:, 0, 0, None] * x + cd_mm[:, 0, 1, None] * y
        eta = cd_mm[:, 1, 0, None] * x + cd_mm[:, 1, 1, None] * y
        return tangent_to_sky(self._dv.wcs_ra[dv, None], self._dv.wcs_dec[dv, None], xi, eta)

    @cached_property
    def _sip_solution(self) -> dict[str, np.ndarray]:
        """TAN-SIP header parameters of every detector-visit's calibrated images.

        As Rubin's headers do, CRPIX is the detector centre and CRVAL the sky there; CD
        and the order-3 SIP polynomials are a least-squares fit of the astrometric
        solution on a grid over the pixel grid (one shared pseudo-inverse for all).
        """
        n_dv = len(self._dv.detector)
        nx, ny = binned_shape(self.config.binning)
        crpix = np.array([(nx + 1) / 2.0, (ny + 1) / 2.0])
        gu, gv = np.meshgrid(
            np.linspace(-0.5, nx - 0.5, SIP_FIT_GRID), np.linspace(-0.5, ny - 0.5, SIP_FIT_GRID)
        )
        du, dv_ = gu.ravel() - (crpix[0] - 1.0), gv.ravel() - (crpix[1] - 1.0)
        idx = np.arange(n_dv)
        c_ra, c_dec = self._calibrated_sky(
            idx, np.array([crpix[0] - 1.0]), np.array([crpix[1] - 1.0])
        )
        c_ra, c_dec = c_ra[:, 0], c_dec[:, 0]
        g_ra, g_dec = self._calibrated_sky(idx, gu.ravel(), gv.ravel())
        xi, eta, _ = sky_to_tangent(c_ra[:, None], c_dec[:, None], g_ra, g_dec)
        cd, a, b = fit_tan_sip_batch(du, dv_, xi, eta, SIP_ORDER)
        return {"crval": np.stack([c_ra, c_dec], axis=1), "crpix": crpix, "cd": cd, "a": a, "b": b}

    def _sip_wcs(self, dv: int) -> TanWcs:
        """The TAN-SIP header WCS of a calibrated image, with fitted AP/BP inverse terms."""
        sol = self._sip_solution
        crpix = (float(sol["crpix"][0]), float(sol["crpix"][1]))
        naxis = binned_shape(self.config.binning)
        sip = Sip(
            order=SIP_ORDER,
            a=tuple(float(x) for x in sol["a"][dv]),
            b=tuple(float(x) for x in sol["b"][dv]),
        )
        cd = sol["cd"][dv]
        return TanWcs(
            crval=(float(sol["crval"][dv, 0]), float(sol["crval"][dv, 1])),
            crpix=crpix,
            cd=((float(cd[0, 0]), float(cd[0, 1])), (float(cd[1, 0]), float(cd[1, 1]))),
            naxis=naxis,
            sip=fit_sip_inverse(sip, naxis, crpix, SIP_INVERSE_ORDER),
        )

    # ----------------------------------------------------------------- products
    def _band_visit_stats(self) -> dict[tuple[str, str], dict[str, float]]:
        """Time span, exposure, PSF and input count of each coadd kind and band."""
        v = self.visits
        out: dict[tuple[str, str], dict[str, float]] = {}
        for band in BANDS:
            sel = np.nonzero(v.band == band)[0]
            order = sel[np.argsort(v.seeing_arcsec[sel], kind="stable")]
            n_good = max(1, int(round(GOOD_SEEING_FRACTION * len(order))))
            for kind, use in ((DEEP_COADD, order), (TEMPLATE_COADD, order[:n_good])):
                if len(use) == 0:
                    out[(kind, band)] = dict(
                        t_min=np.nan, t_max=np.nan, exptime=0.0, seeing=np.nan, n=0
                    )
                    continue
                out[(kind, band)] = dict(
                    t_min=float(v.t_min[use].min()),
                    t_max=float(v.t_max[use].max()),
                    exptime=float(v.exptime[use].sum()),
                    seeing=float(np.median(v.seeing_arcsec[use])) * COADD_PSF_INFLATION,
                    n=len(use),
                )
        return out

    def _build_columns(self) -> dict[str, object]:
        """Per-product columns (visit products first, then coadds), as numpy arrays."""
        cfg, nm, v, dv = self.config, self.naming, self.visits, self._dv
        nk = len(VISIT_KINDS)
        n_dv = len(dv.detector)
        det_names = np.array([d.name for d in self.camera.detectors()])
        vi = np.repeat(dv.visit_index, nk)
        det = np.repeat(dv.detector, nk)
        kind = np.tile(np.array(VISIT_KINDS), n_dv)
        visit = v.visit[vi]
        band = v.band[vi]
        nx_b, ny_b = binned_shape(cfg.binning)

        patch_c, band_c, kind_c = [], [], []
        n_patches = self.tract.n_patches
        for patch in range(n_patches):
            for b in BANDS:
                for k in COADD_KINDS:
                    patch_c.append(patch)
                    band_c.append(b)
                    kind_c.append(k)
        n_c = len(patch_c)
        stats = self._band_visit_stats()
        patch_ra, patch_dec, patch_region, patch_fov = [], [], [], []
        for patch in range(n_patches):
            ra_k, dec_k = self.tract.patch_corners(patch)
            ra_k, dec_k = polygon_ccw(ra_k[None, :], dec_k[None, :])
            c_ra, c_dec = self.tract.patch_centre(patch)
            patch_ra.append(c_ra)
            patch_dec.append(c_dec)
            patch_region.append(format_polygons(ra_k, dec_k)[0])
            patch_fov.append(
                float(enclosing_diameter(np.array([c_ra]), np.array([c_dec]), ra_k, dec_k)[0])
            )
        pc = np.array(patch_c)
        cstat = [stats[(k, b)] for k, b in zip(kind_c, band_c, strict=True)]
        n_coadd_px = self.tract.geometry.patch_outer_px // cfg.binning

        all_kind = np.concatenate([kind, np.array(kind_c)])
        all_band = np.concatenate([band, np.array(band_c)])
        lo = np.array([nm.spectral_ranges_m[b][0] for b in BANDS])
        hi = np.array([nm.spectral_ranges_m[b][1] for b in BANDS])
        band_pos = {b: i for i, b in enumerate(BANDS)}
        band_idx = np.array([band_pos[b] for b in all_band.tolist()], dtype=np.int8)

        dst = {k: kn.dataset_type for k, kn in nm.kinds.items()}
        uuids = [
            uuid5_str(f"{nm.repo}/{cfg.seed}/{dst[k]}/visit={vv}/detector={dd}")
            for k, vv, dd in zip(kind.tolist(), visit.tolist(), det.tolist(), strict=True)
        ] + [
            uuid5_str(f"{nm.repo}/{cfg.seed}/{dst[k]}/tract={nm.tract}/patch={p}/band={b}")
            for k, p, b in zip(kind_c, patch_c, band_c, strict=True)
        ]
        dv_obs_id = [
            nm.visit_obs_id_fmt.format(
                visit=a, detector_name=det_names[d], visit_name=visit_name(a, nm)
            )
            for a, d in zip(v.visit[dv.visit_index].tolist(), dv.detector.tolist(), strict=True)
        ]
        obs_id = [o for o in dv_obs_id for _ in range(nk)] + [
            nm.coadd_obs_id_fmt.format(skymap=nm.skymap, tract=nm.tract, patch=p, band=b)
            for p, b in zip(patch_c, band_c, strict=True)
        ]
        file_path = [
            nm.visit_file_path(k, b, vv, det_names[d])
            for k, b, vv, d in zip(
                kind.tolist(), band.tolist(), visit.tolist(), det.tolist(), strict=True
            )
        ] + [nm.coadd_file_path(k, b, p) for k, b, p in zip(kind_c, band_c, patch_c, strict=True)]

        def cat(a: np.ndarray, b: object) -> np.ndarray:
            return np.concatenate([np.asarray(a), np.asarray(b, dtype=np.asarray(a).dtype)])

        def served(ivoid: str) -> str:  # as this archive publishes it (a mirror: its own)
            return ivoid if cfg.publisher is None else with_authority(ivoid, cfg.publisher)

        creator_dids = [nm.publisher_did(u) for u in uuids]
        return {
            "uuid": uuids,
            "id": [served(nm.product_id(u)) for u in uuids],
            "did": [served(d) for d in creator_dids],
            "creator_did": creator_dids,
            "obs_id": obs_id,
            "file_path": file_path,
            "kind": all_kind,
            "band": all_band,
            "is_visit": np.concatenate([np.ones(len(kind), bool), np.zeros(n_c, bool)]),
            "dv": np.concatenate(
                [np.repeat(np.arange(n_dv, dtype=np.int32), nk), np.full(n_c, -1, np.int32)]
            ),
            "visit_index": cat(vi, np.full(n_c, -1)),
            "visit": cat(visit, np.zeros(n_c)),
            "detector": cat(det, np.zeros(n_c)),
            "patch": np.concatenate([np.zeros(len(kind), np.int16), pc.astype(np.int16)]),
            "t_min": cat(v.t_min[vi], [s["t_min"] for s in cstat]),
            "t_max": cat(v.t_max[vi], [s["t_max"] for s in cstat]),
            "exptime": cat(v.exptime[vi], [s["exptime"] for s in cstat]),
            "n_inputs": np.concatenate(
                [np.ones(len(kind), np.int32), np.array([s["n"] for s in cstat], np.int32)]
            ),
            "naxis1": np.concatenate(
                [np.full(len(kind), nx_b, np.int32), np.full(n_c, n_coadd_px, np.int32)]
            ),
            "naxis2": np.concatenate(
                [np.full(len(kind), ny_b, np.int32), np.full(n_c, n_coadd_px, np.int32)]
            ),
            "s_region": [r for r in dv.s_region for _ in range(nk)]
            + [patch_region[p] for p in patch_c],
            "s_ra": cat(np.repeat(dv.s_ra, nk), np.array(patch_ra)[pc]),
            "s_dec": cat(np.repeat(dv.s_dec, nk), np.array(patch_dec)[pc]),
            "s_fov": cat(np.repeat(dv.s_fov, nk), np.array(patch_fov)[pc]),
            "s_resolution": cat(v.seeing_arcsec[vi], [s["seeing"] for s in cstat]),
            "em_min": lo[band_idx],
            "em_max": hi[band_idx],
        }

    @property
    def columns(self) -> dict[str, object]:
        """Per-product columns (lists/arrays aligned with :attr:`products`), read-only use."""
        return self._columns

    @property
    def products(self) -> tuple[Product, ...]:
        """All products, visit images first (visit, detector, raw/calexp/diff), then coadds."""
        return self._all_products

    @cached_property
    def _all_products(self) -> tuple[Product, ...]:
        c, nm = self._columns, self.naming
        names = [d.name for d in self.camera.detectors()]
        kinds = {k: (kn.dataset_type, kn.subtype, kn.calib_level) for k, kn in nm.kinds.items()}
        filters = {b: nm.physical_filter(b) for b in BANDS}
        lists = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in c.items()}
        out = []
        for i, is_visit in enumerate(lists["is_visit"]):
            kind, band = lists["kind"][i], lists["band"][i]
            dst, subtype, level = kinds[kind]
            visit = lists["visit"][i] if is_visit else None
            det = lists["detector"][i] if is_visit else None
            out.append(
                Product(
                    id=lists["id"][i],
                    uuid=lists["uuid"][i],
                    obs_id=lists["obs_id"][i],
                    obs_publisher_did=lists["did"][i],
                    obs_creator_did=lists["creator_did"][i],
                    kind=kind,
                    dataset_type=dst,
                    subtype=subtype,
                    calib_level=level,
                    band=band,
                    physical_filter=filters[band] if is_visit else None,
                    visit=visit,
                    detector=det,
                    detector_name=names[det] if is_visit else None,
                    ccdvisitid=visit * 1000 + det if is_visit else None,
                    tract=None if is_visit else nm.tract,
                    patch=None if is_visit else lists["patch"][i],
                    t_min=lists["t_min"][i],
                    t_max=lists["t_max"][i],
                    exptime=lists["exptime"][i],
                    naxis1=lists["naxis1"][i],
                    naxis2=lists["naxis2"][i],
                    s_region=lists["s_region"][i],
                    s_ra=lists["s_ra"][i],
                    s_dec=lists["s_dec"][i],
                    s_fov=lists["s_fov"][i],
                    s_resolution=lists["s_resolution"][i],
                    em_min=lists["em_min"][i],
                    em_max=lists["em_max"][i],
                    file_path=lists["file_path"][i],
                )
            )
        return tuple(out)

    def __len__(self) -> int:
        return len(self._index)

    def product(self, product_id: str) -> Product:
        """The product with this Datalink ID; KeyError if unknown."""
        return self._product_at(self._index[product_id])

    def _product_at(self, i: int) -> Product:
        c, nm = self._columns, self.naming
        kind = str(c["kind"][i])
        kn = nm.kinds[kind]
        band = str(c["band"][i])
        is_visit = bool(c["is_visit"][i])
        visit = int(c["visit"][i]) if is_visit else None
        det = int(c["detector"][i]) if is_visit else None
        return Product(
            id=c["id"][i],
            uuid=c["uuid"][i],
            obs_id=c["obs_id"][i],
            obs_publisher_did=c["did"][i],
            obs_creator_did=c["creator_did"][i],
            kind=kind,
            dataset_type=kn.dataset_type,
            subtype=kn.subtype,
            calib_level=kn.calib_level,
            band=band,
            physical_filter=nm.physical_filter(band) if is_visit else None,
            visit=visit,
            detector=det,
            detector_name=self.camera.detectors()[det].name if det is not None else None,
            ccdvisitid=visit * 1000 + det if visit is not None and det is not None else None,
            tract=None if is_visit else nm.tract,
            patch=None if is_visit else int(c["patch"][i]),
            t_min=float(c["t_min"][i]),
            t_max=float(c["t_max"][i]),
            exptime=float(c["exptime"][i]),
            naxis1=int(c["naxis1"][i]),
            naxis2=int(c["naxis2"][i]),
            s_region=c["s_region"][i],
            s_ra=float(c["s_ra"][i]),
            s_dec=float(c["s_dec"][i]),
            s_fov=float(c["s_fov"][i]),
            s_resolution=float(c["s_resolution"][i]),
            em_min=float(c["em_min"][i]),
            em_max=float(c["em_max"][i]),
            file_path=c["file_path"][i],
        )

    # ----------------------------------------------------------------- tables
    def obscore_table(
        self,
        datalink_url: str,
        *,
        access_style: str = "datalink",
        base_url: str = "",
        file_suffix: str = "",
        creator_did: bool = False,
    ) -> Table:
        """ivoa.ObsCore rows for every product (see :mod:`obsharvest.simarchive.obscore`)."""
        from obsharvest.simarchive.obscore import build_obscore_table

        return build_obscore_table(
            self,
            datalink_url,
            access_style=access_style,
            base_url=base_url,
            file_suffix=file_suffix,
            creator_did=creator_did,
        )

    # ----------------------------------------------------------------- files
    @cached_property
    def stars(self) -> StarField:
        return make_starfield(self.config.seed, self.config.field_ra, self.config.field_dec)

    def celestial_wcs(self, product_id: str) -> TanWcs:
        """The WCS written into the product's celestial HDU."""
        return self._wcs_at(self._index[product_id])

    def _wcs_at(self, i: int) -> TanWcs:
        c = self._columns
        if c["is_visit"][i]:
            return self._detector_wcs(int(c["dv"][i]), calibrated=str(c["kind"][i]) != RAW)
        return self.tract.patch_wcs(int(c["patch"][i]), self.config.binning)

    def image_context(self, product_id: str) -> fitsgen.ImageContext:
        """Headers-and-pixels recipe of a product, for :mod:`obsharvest.simarchive.sky.fitsgen`."""
        i = self._index[product_id]
        p = self._product_at(i)
        b = self.config.binning
        c = self._columns
        wcs = self._wcs_at(i)
        u = uuid.UUID(p.uuid).int
        pixel_seed = (self.config.seed, *((u >> s) & 0xFFFFFFFF for s in (96, 64, 32, 0)))
        sky_adu = SKY_ADU_30S[p.band] * p.exptime / 30.0 if p.visit is not None else 0.0
        visit_sigma = float(np.sqrt(SKY_ADU_30S[p.band] + READ_NOISE_ADU**2))
        psf_sigma_px = p.s_resolution / 2.3548 / (PIXEL_SCALE_ARCSEC * b)
        pointing = None
        xy0 = (0, 0)
        if p.visit is not None:
            vi = int(c["visit_index"][i])
            dead = int(self._dv.dead_amp[int(c["dv"][i])])
            pointing = fitsgen.Pointing(
                ra=float(self.visits.ra[vi]),
                dec=float(self.visits.dec[vi]),
                rotation_deg=float(self.visits.rotation_deg[vi]),
                airmass=float(self.visits.airmass[vi]),
                seeing_arcsec=float(self.visits.seeing_arcsec[vi]),
            )
            recipe = PixelRecipe(
                shape=(p.naxis2, p.naxis1),
                sky_level=RAW_BIAS_ADU + sky_adu if p.kind == RAW else 0.0,
                sky_sigma=visit_sigma * (DIFF_NOISE_INFLATION if p.kind == DIFF else 1.0) / b,
                psf_sigma_px=psf_sigma_px,
                zero_point=ZERO_POINT_30S[p.band],
                flux_factor=(DIFF_RESIDUAL_FRACTION if p.kind == DIFF else 1.0) / b**2,
                poisson_coeff=1.0 / b**2,
                dead_amp=dead if dead >= 0 else None,
                edge_px=0 if p.kind == RAW else max(1, EDGE_PX_UNBINNED // b),
            )
            bunit = "adu"
        else:
            n_in = max(1, int(c["n_inputs"][i]))
            njy_per_adu = 10.0 ** (0.4 * (NJY_ZERO_POINT - ZERO_POINT_30S[p.band]))
            recipe = PixelRecipe(
                shape=(p.naxis2, p.naxis1),
                sky_level=0.0,
                sky_sigma=visit_sigma * njy_per_adu / np.sqrt(n_in) / b,
                psf_sigma_px=psf_sigma_px,
                zero_point=NJY_ZERO_POINT,
                flux_factor=1.0 / b**2,
                poisson_coeff=njy_per_adu / n_in / b**2,
                dead_amp=None,
                edge_px=0,
            )
            x0, y0 = self.tract.patch_origin(int(c["patch"][i]))
            xy0 = (int(round(x0 / b)), int(round(y0 / b)))
            bunit = "nJy"
        return fitsgen.ImageContext(
            product=p,
            naming=self.naming,
            wcs=wcs,
            binning=b,
            pixel_seed=pixel_seed,
            recipe=recipe,
            stars=self.stars,
            bunit=bunit,
            pointing=pointing,
            n_input_visits=int(c["n_inputs"][i]) if p.visit is None else None,
            xy0=xy0,
            patches_per_side=self.tract.geometry.patches_per_side,
        )

    def fits_size(self, product_id: str) -> int:
        """Exact byte size of the file :meth:`write_fits` writes, from headers only.

        Kept per product: Datalink gives every link's ``content_length``, and building the
        headers with astropy for each one was most of the archive's CPU in a harvest,
        which on one machine the client's run then waited for."""
        size = self._sizes.get(product_id)
        if size is None:
            size = self._sizes[product_id] = fitsgen.fits_size(self.image_context(product_id))
        return size

    def write_fits(self, product_id: str, path: str) -> None:
        """Write the product's FITS file to ``path`` (the caller handles temp files/caching)."""
        fitsgen.write_fits(self.image_context(product_id), path)

    # ----------------------------------------------------------------- truth
    @cached_property
    def _truth_arrays(self) -> dict[str, np.ndarray]:
        """Per-product header WCS parameters for vectorised point-in-pixel-grid tests.

        ``sip`` lists the rows with TAN-SIP headers; ``sip_a``/``sip_b`` hold their
        forward polynomials (the same numbers the headers carry).
        """
        n = len(self._index)
        crval = np.empty((n, 2))
        crpix = np.empty((n, 2))
        inv_cd = np.empty((n, 2, 2))
        naxis = np.empty((n, 2))
        c = self._columns
        vis = np.nonzero(c["is_visit"])[0]
        dv = c["dv"][vis]
        vi = self._dv.visit_index[dv]
        raw = c["kind"][vis] == RAW
        crval[vis, 0] = np.where(raw, self.visits.ra[vi], self._dv.wcs_ra[dv])
        crval[vis, 1] = np.where(raw, self.visits.dec[vi], self._dv.wcs_dec[dv])
        p1, p2 = self._detector_crpix(vi, self._dv.detector[dv])
        crpix[vis, 0], crpix[vis, 1] = p1, p2
        inv_cd[vis] = np.linalg.inv(self._cd_unbinned[vi] * self.config.binning)
        naxis[vis] = binned_shape(self.config.binning)
        for i in np.nonzero(~c["is_visit"])[0]:
            w = self.tract.patch_wcs(int(c["patch"][i]), self.config.binning)
            crval[i], crpix[i], naxis[i] = w.crval, w.crpix, w.naxis
            inv_cd[i] = np.linalg.inv(np.array(w.cd))
        out = {"crval": crval, "crpix": crpix, "inv_cd": inv_cd, "naxis": naxis}
        sip_rows = vis[~raw] if self.naming.survey.sip_headers else vis[:0]
        if len(sip_rows):
            sol, sip_dv = self._sip_solution, c["dv"][sip_rows]
            crval[sip_rows] = sol["crval"][sip_dv]
            crpix[sip_rows] = sol["crpix"]
            inv_cd[sip_rows] = np.linalg.inv(sol["cd"][sip_dv])
            out.update(sip=sip_rows, sip_a=sol["a"][sip_dv], sip_b=sol["b"][sip_dv])
        return out

    def pixel_position(self, ra: float, dec: float) -> tuple[np.ndarray, np.ndarray]:
        """0-based pixel coordinates of (ra, dec) on every product's header WCS grid.

        For TAN-SIP rows the distortion is inverted exactly (not with AP/BP) for points
        within SIP_SOLVE_BOX image sizes of the image; farther out the undistorted TAN
        position is returned, which is off by a few pixels at most and far outside.
        """
        t = self._truth_arrays
        xi, eta, valid = sky_to_tangent(t["crval"][:, 0], t["crval"][:, 1], ra, dec)
        inv = t["inv_cd"]
        du = inv[:, 0, 0] * xi + inv[:, 0, 1] * eta
        dv = inv[:, 1, 0] * xi + inv[:, 1, 1] * eta
        if "sip" in t:
            rows = t["sip"]
            near = np.nonzero(
                valid[rows]
                & (np.abs(du[rows]) < (0.5 + SIP_SOLVE_BOX) * t["naxis"][rows, 0])
                & (np.abs(dv[rows]) < (0.5 + SIP_SOLVE_BOX) * t["naxis"][rows, 1])
            )[0]
            if len(near):
                r = rows[near]
                du[r], dv[r] = sip_solve(
                    sip_terms(SIP_ORDER), t["sip_a"][near], t["sip_b"][near], du[r], dv[r]
                )
        px = du + t["crpix"][:, 0] - 1.0
        py = dv + t["crpix"][:, 1] - 1.0
        return np.where(valid, px, np.nan), np.where(valid, py, np.nan)

    def truth(self, ra: float, dec: float) -> frozenset[str]:
        """Products whose header WCS pixel grid contains the point: pixel in [-0.5, N-0.5).

        Decided with the same TAN (and SIP) formulas and numbers as the headers; points
        within TRUTH_EDGE_RECHECK_PX of an edge are re-decided with ``astropy.wcs.WCS``
        built from the product's celestial header, so astropy has the last word.
        """
        px, py = self.pixel_position(ra, dec)
        n = self._truth_arrays["naxis"]
        lo = -0.5
        with np.errstate(invalid="ignore"):
            inside = (px >= lo) & (px < n[:, 0] + lo) & (py >= lo) & (py < n[:, 1] + lo)
            edge_dist = np.minimum.reduce(
                [
                    np.abs(px - lo),
                    np.abs(px - n[:, 0] - lo),
                    np.abs(py - lo),
                    np.abs(py - n[:, 1] - lo),
                ]
            )
            near = np.nonzero((edge_dist < TRUTH_EDGE_RECHECK_PX) & np.isfinite(edge_dist))[0]
        ids = self._columns["id"]
        for i in near:
            inside[i] = self._astropy_contains(ids[i], ra, dec)
        return frozenset(ids[i] for i in np.nonzero(inside)[0])

    def celestial_header(self, product_id: str) -> fits.Header:
        """Header of the HDU that carries the pixel WCS (HDU0 for raws, HDU1 otherwise)."""
        specs = fitsgen.layout(self.image_context(product_id))
        return specs[0].header if len(specs) == 1 else specs[1].header

    def _astropy_contains(self, product_id: str, ra: float, dec: float) -> bool:
        w = WCS(self.celestial_header(product_id))
        x, y = w.all_world2pix([[ra, dec]], 0)[0]
        nx, ny = w.pixel_shape
        return bool(-0.5 <= x < nx - 0.5 and -0.5 <= y < ny - 0.5)
