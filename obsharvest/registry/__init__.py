"""Finding ObsCore services through the IVOA Registry (RegTAP) and probing them.

``search`` asks a RegTAP service which TAP services carry ObsCore, in both ways a record
can say so; ``probe`` asks each of them, in parallel and within a time limit, how many
images it has for a list of targets. ``obsharvest discover`` (``flows/discover.py``) is
the command line over both.
"""

from obsharvest.registry.probe import Probe, probe_all, probe_service
from obsharvest.registry.search import (
    FoundService,
    RegistryError,
    default_registry_url,
    find_obscore_services,
    service_names,
)

__all__ = [
    "FoundService",
    "Probe",
    "RegistryError",
    "default_registry_url",
    "find_obscore_services",
    "probe_all",
    "probe_service",
    "service_names",
]
