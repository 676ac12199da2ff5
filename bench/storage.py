"""Object store against local disk: the same run reading and writing through S3 or local files.

A loopback S3 server (moto's standalone ``ThreadedMotoServer``, in this process) holds a COG of the
scene; each run is a fresh child process that segments it, reporting its time and its peak
resident set (``ru_maxrss``):

- local: the COG on disk -> a mosaic on disk;
- s3: ``s3://bench/scene.tif`` -> ``s3://bench/scene.zarr``, through GDAL's /vsis3/ and zarr's
  ObjectStore over obstore, as a user with ``AWS_ENDPOINT_URL`` would run it;

for a small and a large scene, so that the S3 run's peak can be compared across sizes too (memory
must follow the tile, not the scene). The chunks of the two mosaics of a size are compared byte
for byte. The model is the ``pointwise`` stand-in: the point is I/O, not the network. The server
runs on the same machine and shares its cores, so the time ratio is a worst case for the
client's overhead, not a network figure.

    uv run python bench/storage.py                       # 2048^2 and 4096^2, tiles of 1024
    uv run python bench/storage.py --sizes 4096 8192
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import boto3
from memory import draw_windows, make_checkpoint, peak_rss_mib, write_scene_in_windows
from moto.server import ThreadedMotoServer
from rasterio.shutil import copy as gdal_copy

from pipeline.settings import SegmentSettings
from pipeline.tiling.segment import plan_scene, run_local

BUCKET = "bench"


def parse_args() -> argparse.Namespace:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--sizes", type=int, nargs=2, default=(2048, 4096), metavar=("SMALL", "LARGE"))
    parser.add_argument("--tile-size", type=int, default=1024)
    parser.add_argument("--child", nargs=3, metavar=("INPUT", "OUTPUT", "WEIGHTS"), help=argparse.SUPPRESS)
    return parser.parse_args()


def child(args: argparse.Namespace) -> dict[str, Any]:
    """Segment INPUT into OUTPUT in this fresh process; its time and peak memory."""
    source, target, weights = args.child
    settings = SegmentSettings(tile_size=args.tile_size, device="cpu")
    start = time.perf_counter()
    run_local(plan_scene(source, Path(weights), settings, output=target, overwrite=True))
    return {"seconds": time.perf_counter() - start, "peak_mib": peak_rss_mib()}


def measure(source: str, target: str, weights: Path, tile: int, env: dict[str, str]) -> dict[str, Any]:
    """Run this script as a child on one input and output."""
    command = [sys.executable, __file__, "--tile-size", str(tile), "--child", source, target, str(weights)]
    done = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True, env=env)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def local_chunks(store: Path) -> dict[str, bytes]:
    """The data chunks of a local mosaic (manifest and metadata left out)."""
    files = (p for p in sorted(store.rglob("*")) if p.is_file() and "fcnpipe" not in p.parts)
    return {str(p.relative_to(store)): p.read_bytes() for p in files if "/c/" in f"/{p.relative_to(store)}"}


def bucket_chunks(client: Any, prefix: str) -> dict[str, bytes]:
    """The data chunks of a mosaic in the bucket."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/")
    keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    keys = [k for k in keys if "/c/" in k and "/fcnpipe/" not in k]
    return {k[len(prefix) + 1 :]: client.get_object(Bucket=BUCKET, Key=k)["Body"].read() for k in keys}


def main() -> None:
    args = parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {**os.environ, "AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "bench",
           "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1"}  # fmt: skip
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id="bench", aws_secret_access_key="bench")  # fmt: skip
    client.create_bucket(Bucket=BUCKET)
    rows = []
    with tempfile.TemporaryDirectory(prefix="fcnpipe-storage-") as tmp:
        folder = Path(tmp)
        weights = make_checkpoint(folder, 6)
        windows = draw_windows(1024)
        for size in args.sizes:
            plain, cog = folder / f"plain-{size}.tif", folder / f"scene-{size}.tif"
            write_scene_in_windows(plain, size, windows)
            gdal_copy(str(plain), str(cog), driver="COG", COMPRESS="ZSTD", BLOCKSIZE=512)
            plain.unlink()
            client.upload_file(str(cog), BUCKET, cog.name)
            local = measure(str(cog), str(folder / f"scene-{size}.zarr"), weights, args.tile_size, env)
            remote = measure(f"s3://{BUCKET}/{cog.name}", f"s3://{BUCKET}/scene-{size}.zarr", weights,
                             args.tile_size, env)  # fmt: skip
            same = local_chunks(folder / f"scene-{size}.zarr") == bucket_chunks(client, f"scene-{size}.zarr")
            rows.append((size, cog.stat().st_size / 2**20, local, remote, same))
    server.stop()
    report(args, rows)


def report(
    args: argparse.Namespace, rows: list[tuple[int, float, dict[str, Any], dict[str, Any], bool]]
) -> None:
    """Print each run, the S3 / local ratios and the S3 peaks across sizes."""
    print("fcnpipe storage benchmark: local files against a loopback S3 server (moto), fresh process each")
    print(f"model: the 'pointwise' stand-in; tile {args.tile_size}; COG input (zstd, 512-px tiles)")
    print(f"\n{'scene':>8} {'COG MiB':>8} {'run':>6} {'seconds':>8} {'Mpx/s':>7} {'peak MiB':>9}")
    for size, mib, local, remote, _ in rows:
        for name, run in (("local", local), ("s3", remote)):
            mpx = size * size / 1e6 / run["seconds"]
            cells = f"{run['seconds']:>8.2f} {mpx:>7.2f} {run['peak_mib']:>9.0f}"
            print(f"{f'{size}^2':>8} {mib:>8.0f} {name:>6} {cells}")
    print()
    for size, _, local, remote, same in rows:
        print(f"{size}^2: s3 / local time {remote['seconds'] / local['seconds']:.2f}x, "
              f"peak RSS {remote['peak_mib'] / local['peak_mib']:.2f}x; "
              f"chunks {'identical' if same else 'DIFFER'}")  # fmt: skip
    (small, _, _, s3_small, _), (large, _, _, s3_large, _) = rows
    print(f"s3 peak RSS {large}^2 / {small}^2: {s3_large['peak_mib'] / s3_small['peak_mib']:.2f} "
          f"for {(large / small) ** 2:.0f}x the pixels (bounded by the tile: close to 1)")  # fmt: skip


if __name__ == "__main__":
    main()
