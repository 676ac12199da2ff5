"""Outputs: the Zarr mosaic, its pyramid, exports, reports and what reads them."""
