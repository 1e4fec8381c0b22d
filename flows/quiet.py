"""Keep library chatter a user cannot act on off the console (the CLI and every flow run).

- urllib3's "Connection pool is full, discarding connection": a thread pool briefly had
  more connections to one host than the pool keeps; the extra connection is closed
  instead of reused. Nothing is lost and nothing can be done about it from outside.
- astropy's FITS fix-up notes (``VerifyWarning``: a card "fixed", a long comment cut) and
  WCS header fix-ups (``FITSFixedWarning``: "Set MJD-OBS from DATE-OBS"): the archive's
  headers, read as they are; a header that is really broken becomes a verdict with a reason.

``-v`` (debug logging) keeps all of it. What is hidden is demoted, not lost: urllib3's line
goes to DEBUG.
"""

from __future__ import annotations

import logging
import warnings

_POOL_FULL = "Connection pool is full"
_installed = False


class _PoolFullToDebug(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and _POOL_FULL in str(record.msg):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def quiet_library_noise(verbose: bool = False) -> None:
    """Install the filters once per process (no-op when ``verbose``)."""
    global _installed
    if _installed:
        return
    _installed = True  # a verbose CLI decides for the flow it runs in the same process
    if verbose:
        return
    logging.getLogger("urllib3.connectionpool").addFilter(_PoolFullToDebug())
    from astropy.io.fits.verify import VerifyWarning
    from astropy.wcs import FITSFixedWarning

    warnings.filterwarnings("ignore", category=VerifyWarning)
    warnings.filterwarnings("ignore", category=FITSFixedWarning)
    # astropy.io.fits says "non-standard" header things as AstropyUserWarning too
    warnings.filterwarnings("ignore", module=r"astropy\.io\.fits(\..*)?$")
