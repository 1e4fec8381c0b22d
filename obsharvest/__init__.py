"""obsharvest: harvest the images that truly contain each target from IVOA ObsTAP archives.

The public API is ``__all__``; every other name is internal and may change.

- :func:`harvest` and :func:`plan` run a whole harvest in this process (scripts,
  notebooks) and return a :class:`Harvest`: its ``summary`` and its ``parquet`` dataset.
- :class:`Target` and :class:`Summary` are the records they take and give;
  :class:`UserError` is what a bad value raises (one line naming it).

The command line (``obsharvest run``) and the Prefect flow
(``obsharvest.flows.harvest:harvest``) are the other two ways in. The names here are
loaded on first use, so importing the library (``obsharvest.query``, ``obsharvest.images``,
...) never imports Prefect or the flows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from obsharvest.errors import UserError
    from obsharvest.flows.api import Harvest, harvest, plan
    from obsharvest.models import Summary, Target

__all__ = ["Harvest", "Summary", "Target", "UserError", "harvest", "plan"]

_HOMES = {
    "harvest": "obsharvest.flows.api",
    "plan": "obsharvest.flows.api",
    "Harvest": "obsharvest.flows.api",
    "Summary": "obsharvest.models",
    "Target": "obsharvest.models",
    "UserError": "obsharvest.errors",
}


def __getattr__(name: str) -> Any:
    """The public names, imported when first used (PEP 562)."""
    if name not in _HOMES:
        raise AttributeError(f"module 'obsharvest' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
