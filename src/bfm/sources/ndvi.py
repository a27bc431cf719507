"""ndvi source (being written: see the climate-and-land-sources issue)."""
