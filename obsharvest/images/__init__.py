"""Per image: Datalink → header range read → WCS verdicts → store (see :mod:`.batch`)."""

from .batch import (
    ImageSettings,
    check_cutouts,
    check_cutouts_offered,
    harvest_images,
    header_block,
    prior_verdicts,
    process_images,
)

__all__ = [
    "ImageSettings",
    "check_cutouts",
    "check_cutouts_offered",
    "harvest_images",
    "header_block",
    "prior_verdicts",
    "process_images",
]
