"""Seconds per training step (forward + backward + AdamW, no DeepSpeed, no I/O) per preset.

Usage: python benchmarks/train_step.py [--presets tiny small] [--grid 25x41] [--steps 5]
On a GPU it runs there under bf16 autocast.
"""

from __future__ import annotations

import argparse
import time

import torch

from bfm.contracts.catalogue import DEFAULT_LEVELS, DimsKind
from bfm.contracts.layout import Layout
from bfm.contracts.sample import ModelInput
from bfm.model import BFM
from bfm.model.presets import build_config
from bfm.testing import BASE_GROUPS

# The real channel counts: 13 pressure levels, the 6 species of resources/species.csv.
EUROPE = Layout(levels=DEFAULT_LEVELS, species=(1, 2, 3, 4, 5, 6), groups=BASE_GROUPS)


def example_input(layout: Layout, h: int, w: int, device: torch.device) -> ModelInput:
    """Random normalised inputs, descending latitudes, day-of-year/hour time."""
    inputs = {}
    for group in layout.groups:
        c = layout.n_channels(group)
        shape = (1, c, h, w) if layout.kind(group) == DimsKind.STATIC else (1, 2, c, h, w)
        inputs[group] = torch.randn(shape, device=device)
    lat = torch.linspace(72.0, 72.0 - 0.25 * (h - 1), h, device=device)
    lon = torch.linspace(-30.0, -30.0 + 0.25 * (w - 1), w, device=device)
    return ModelInput(inputs, lat, lon, torch.tensor([[15.0, 6.0]], device=device))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--presets", nargs="+", default=["tiny", "small", "medium"])
    parser.add_argument("--grid", default="25x41", help="HxW of the grid (Europe: 153x321)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up")
    args = parser.parse_args()
    h, w = (int(v) for v in args.grid.split("x"))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for preset in args.presets:
        model = BFM(build_config(preset, EUROPE)).to(device)
        x = example_input(EUROPE, h, w, device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        times = []
        for i in range(args.steps + 1):
            t0 = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                out = model(x)
                loss = sum(o.float().pow(2).mean() for o in out.values())
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - t0)
        n = sum(p.numel() for p in model.parameters())
        print(
            f"{preset:7s} {n / 1e6:7.2f}M params  grid {h}x{w}  {device.type}: "
            f"{sorted(times)[len(times) // 2]:.3f} s/step (median of {len(times)})"
        )


if __name__ == "__main__":
    main()
