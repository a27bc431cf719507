"""Data sources: one module per source, registered by name (``bfm.sources.base``).

Importing this package registers the built-in sources; ``get(name)`` returns one.
"""

from bfm.sources import (  # noqa: F401  (registers them)
    bold,
    era5,
    gbif,
    inaturalist,
    lpi,
    mol,
    ndvi,
    occurrences,
    redlist,
    worldbank,
    xenocanto,
)
from bfm.sources.base import MODES, NotOffered, Source, Study, get, names, register

__all__ = ["MODES", "NotOffered", "Source", "Study", "get", "names", "register"]
