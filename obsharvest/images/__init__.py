"""Per image: Datalink → header range read → WCS verdicts → store. The harvest's inner loop.

One module per step, in the order an image meets them:

- :mod:`.links`: how each image is reached (Datalink, the access_url itself, or the first
  reply's say); signed URLs resolved just before use and again when they expire (403).
- :mod:`.verify`: containment verdicts from one ranged header read, or an earlier run's.
- :mod:`.mask`: a point on a NO_DATA pixel is not on the data.
- :mod:`.cutout`, :mod:`.download`: what is kept (SODA cutouts or the whole file).
- :mod:`.quicklook`: a PNG beside it.
- :mod:`.batch`: a batch of images through those steps, in thread pools.

:mod:`.settings` holds the one record of how a batch is worked, :mod:`.context` what
the steps of one image share, :mod:`.failure` how a step's error becomes a failure row.
"""

from .batch import check_cutouts, harvest_images, process_images
from .cutout import check_cutouts_offered
from .settings import ImageSettings, header_block
from .verify import prior_verdicts

__all__ = [
    "ImageSettings",
    "check_cutouts",
    "check_cutouts_offered",
    "harvest_images",
    "header_block",
    "prior_verdicts",
    "process_images",
]
