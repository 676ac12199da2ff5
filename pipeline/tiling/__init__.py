"""Tiling: window geometry, raster reads, batched inference, and the plan / block / finish steps."""
