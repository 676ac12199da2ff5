"""A run through failing requests against the same run on a clean connection (issue 21).

A loopback S3 server (moto's ``ThreadedMotoServer``) holds a COG; each run segments it from
``s3://`` to ``s3://`` in a fresh process, reaching the server either directly or through the
fault-injecting proxy of tests/faults.py (503 SlowDown, 500, connection resets, bodies cut short,
added latency, at the rates given). Runs alternate, clean and faulty; printed are each run's wall
time, the faults injected, and whether its chunks equal the clean run's. The model is the
``pointwise`` stand-in: the point is the requests.

    uv run python bench/faults.py                       # 1024 x 1024, rates 3/2/2/2 %, latency 5 %
    uv run python bench/faults.py --rounds 3 --scale 2  # every rate doubled
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
from moto.server import ThreadedMotoServer
from rasterio.shutil import copy as gdal_copy

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))

from tests.conftest import noise_image, randomize, save_model, write_tif  # noqa: E402
from tests.faults import FaultProxy, Weather  # noqa: E402

BUCKET = "faults"
RATES = {"503": 0.03, "500": 0.02, "reset": 0.02, "truncate": 0.02, "latency": 0.05}


def chunks(s3: object, prefix: str) -> dict[str, bytes]:
    """The data chunks of a mosaic in the bucket, by key."""
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)  # type: ignore[attr-defined]
    keys = [o["Key"] for page in pages for o in page.get("Contents", []) if "/c/" in o["Key"]]
    keys = [k for k in keys if "/fcnpipe/" not in k]
    return {k[len(prefix) :]: s3.get_object(Bucket=BUCKET, Key=k)["Body"].read() for k in keys}  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every fault rate")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="faults-"))
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # not a line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    credentials = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1"}
    os.environ.update(credentials)
    s3 = boto3.client("s3", endpoint_url=f"http://{host}:{port}")
    s3.create_bucket(Bucket=BUCKET)
    plain = write_tif(work / "plain.tif", noise_image(args.size, args.size, seed=3))
    gdal_copy(str(plain), str(work / "scene.tif"), driver="COG", BLOCKSIZE=256)
    s3.upload_file(str(work / "scene.tif"), BUCKET, "scene.tif")
    from fcn import build_model

    model = randomize(build_model("pointwise", 4), seed=2, scale=1.0)
    weights = save_model(work / "pointwise.pt", model, "pointwise")
    rates = {name: rate * args.scale for name, rate in RATES.items()}
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(f"{args.size}x{args.size} COG, s3 -> s3, tiles and chunks of 256, pointwise; rates {rates}")
    print(f"1-minute load at the start: {load}")
    times: dict[str, list[float]] = {"clean": [], "faults": []}
    reference: dict[str, bytes] | None = None
    for round_ in range(args.rounds):
        for kind in ("clean", "faults"):
            weather = Weather(rates=rates if kind == "faults" else {}, latency_s=0.1, seed=round_)
            with FaultProxy(f"{host}:{port}", weather) as proxy:
                out = f"out/{kind}{round_}.zarr"
                env = dict(os.environ, AWS_ENDPOINT_URL=proxy.url, FCNPIPE_WARM="0")
                command = [sys.executable, "-m", "fcnpipe", "run", "flows/segment_mosaic.py",
                           "--input", f"s3://{BUCKET}/scene.tif", "--output", f"s3://{BUCKET}/{out}",
                           "--weights", str(weights), "--tile-size", "256", "--chunk", "256"]  # fmt: skip
                start = time.perf_counter()
                done = subprocess.run(command, cwd=HERE, env=env, capture_output=True, text=True)
                seconds = time.perf_counter() - start
            if done.returncode != 0:
                raise SystemExit(f"{kind} run failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
            got = chunks(s3, out + "/")
            reference = reference if reference is not None else got
            times[kind].append(seconds)
            broken = sum(n for name, n in proxy.injected.items() if name != "latency")
            print(f"  {kind:6s} round {round_ + 1}: {seconds:5.1f} s, {proxy.requests} requests, "
                  f"{broken} failed ({dict(proxy.injected)}), chunks equal the first clean run's: "
                  f"{got == reference}")  # fmt: skip
    clean, faulty = statistics.median(times["clean"]), statistics.median(times["faults"])
    print(f"median: clean {clean:.1f} s, with faults {faulty:.1f} s: {faulty / clean:.2f}x")
    server.stop()


if __name__ == "__main__":
    main()
