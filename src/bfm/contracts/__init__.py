"""Data contracts, lowest layer: the catalogue, grid, time axis, tile, batch, layout, sample
and statistics schemas. Nothing here imports the pipeline, the model or training."""
