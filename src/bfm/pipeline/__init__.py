"""The data pipeline steps (thin I/O around the contracts and sources): bfm sample, download,
tile, batch and stats."""
