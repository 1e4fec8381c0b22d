"""What can be checked before a run starts, without Prefect: the CLI runs it before it
starts anything (a Prefect API, the archive), so a user error costs no waiting.

The target list and the query values; an AWS credentials block when one is named.
"""

from __future__ import annotations

from tasks.adql import AdqlValueError, Constraints
from tasks.credentials import CredentialsError, load_aws_block
from tasks.targets import TargetError, read_targets, single_target

from .params import HarvestParams

# the user errors preflight raises (the flow's USER_ERRORS holds these and more)
PREFLIGHT_ERRORS = (TargetError, AdqlValueError, CredentialsError)


def constraints_of(params: HarvestParams) -> Constraints:
    """The query constraints the parameters ask for."""
    c = params.constraints
    start, end = c.mjd_range
    return Constraints(
        bands=tuple(c.bands),
        subtypes=tuple(c.subtypes),
        calib_levels=tuple(c.calib_levels),
        t_min=start,
        t_max=end,
        extra_where=c.extra_where,
        band_column=params.service.band_column,
    )


def preflight(params: HarvestParams) -> None:
    """Check what can be checked before any work starts: the target list and the query
    values. Raises the same user errors the flow would, without a flow run."""
    if params.targets:
        read_targets(params.targets, default_radius=params.radius)
    else:
        single_target(params.ra, params.dec, params.radius, params.target_name)
    constraints_of(params).clauses()
    if params.storage.aws_credentials_block:
        load_aws_block(params.storage.aws_credentials_block)
