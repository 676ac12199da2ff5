"""Many scenes: the batch flow over N small scenes in a bucket, on 2 local workers (issue 21).

A loopback S3 server (moto's ``ThreadedMotoServer``, in this process) holds N small COGs under
``s3://many/in/``; one ``fcnpipe run flows/segment_batch.py`` (a fresh process, the real command
line, its own kept local Prefect API) segments them all into ``s3://many/out/`` with ``--workers 2``.
Printed: scenes per minute, and the whole process tree's resident memory (the command, its Dask
workers, the Prefect API it started), sampled every half second, as the peak of each quarter of
the run, so a leak shows as a rising row. Then a sample of the mosaics is compared, chunk for
chunk, with the same scene segmented on its own in this process. The model is the demonstration
FCN-8s (``fcn8s-demo``, random weights): a real network, small enough that per-scene overhead
shows.

    uv run python bench/many_scenes.py                # 200 scenes of 256 x 256
    uv run python bench/many_scenes.py --scenes 50 --size 512
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import boto3
import numpy as np
import psutil
from moto.server import ThreadedMotoServer
from rasterio.shutil import copy as gdal_copy

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))

from pipeline.settings import SegmentSettings  # noqa: E402
from pipeline.tiling.segment import plan_scene, run_local  # noqa: E402
from tests.conftest import noise_image, write_tif  # noqa: E402

BUCKET = "many"


def tree_rss_mib(pid: int, api_pid: int | None) -> tuple[float, float]:
    """Resident memory of a process and all its descendants, and of the Prefect API among them, in MiB."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0, 0.0
    total = api = 0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            rss = proc.memory_info().rss
            total += rss
            api += rss if proc.pid == api_pid else 0
    return total / 2**20, api / 2**20


def api_pid(home: Path) -> int | None:
    """The kept Prefect API's process, once the command has started it."""
    with contextlib.suppress(OSError, ValueError, KeyError):
        return int(json.loads((home / "api.json").read_text())["pid"])
    return None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenes", type=int, default=200)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--check", type=int, default=3, help="mosaics compared with single runs")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="many-"))
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # not a line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    credentials = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1"}
    env = dict(os.environ, AWS_ENDPOINT_URL=endpoint, FCNPIPE_HOME=str(work / "home"), FCNPIPE_WARM="0",
               **credentials)  # fmt: skip
    env.pop("PREFECT_API_URL", None)
    os.environ.update({k: env[k] for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                            "AWS_REGION")})  # fmt: skip
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    weights = work / "demo.pt"
    init = ["weights", "init", "--arch", "fcn8s-demo", "--classes", "6", "--random", "--out", str(weights)]
    subprocess.run(
        [sys.executable, "-m", "fcnpipe", *init], check=True, cwd=HERE, env=env, capture_output=True
    )
    scenes = []
    for i in range(args.scenes):
        plain = write_tif(work / f"plain{i}.tif", noise_image(args.size, args.size, seed=i))
        cog = work / f"s{i:03d}.tif"
        gdal_copy(str(plain), str(cog), driver="COG", BLOCKSIZE=256)
        plain.unlink()
        s3.upload_file(str(cog), BUCKET, f"in/{cog.name}")
        scenes.append(cog)
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    command = [sys.executable, "-m", "fcnpipe", "run", "flows/segment_batch.py", "--inputs", f"s3://{BUCKET}/in/",
               "--output-dir", f"s3://{BUCKET}/out", "--weights", str(weights), "--workers", "2"]  # fmt: skip
    samples: list[tuple[float, float, float]] = []
    start = time.perf_counter()
    proc = subprocess.Popen(
        command, cwd=HERE, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )

    def sample() -> None:
        while proc.poll() is None:
            samples.append((time.perf_counter() - start, *tree_rss_mib(proc.pid, api_pid(work / "home"))))
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = proc.communicate()
    seconds = time.perf_counter() - start
    sampler.join()
    if proc.returncode != 0:
        print(output[-3000:])
        raise SystemExit(f"the batch failed (exit {proc.returncode})")
    after = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(f"{args.scenes} scenes of {args.size}x{args.size} px, s3 -> s3, --workers 2, fcn8s-demo; "
          f"1-minute load at the start {load}, at the end {after}")  # fmt: skip
    print(f"wall {seconds:.1f} s: {args.scenes / seconds * 60:.1f} scenes per minute")
    quarter = seconds / 4
    for q in range(4):
        inside = [(rss, api) for t, rss, api in samples if q * quarter <= t < (q + 1) * quarter]
        tree, api = max(inside, default=(0, 0))
        print(f"  quarter {q + 1}: process tree peak {tree:.0f} MiB, of which the Prefect API {api:.0f} MiB "
              f"({len(inside)} samples)")  # fmt: skip
    settings = SegmentSettings()
    same = 0
    picks = np.linspace(0, args.scenes - 1, args.check).astype(int)
    for i in picks:
        local = work / f"single{i}.zarr"
        run_local(plan_scene(scenes[i], weights, settings, output=local, workers=2))  # as the batch sized it
        prefix = f"out/{scenes[i].stem}.zarr/"
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        keys = [o["Key"] for page in pages for o in page.get("Contents", []) if "/c/" in o["Key"]]
        remote = {k[len(prefix) :]: s3.get_object(Bucket=BUCKET, Key=k)["Body"].read() for k in keys}
        remote = {k: v for k, v in remote.items() if not k.startswith("fcnpipe/")}
        files = [p for p in local.rglob("*") if p.is_file() and "/c/" in f"/{p.relative_to(local)}"]
        mine = {
            str(p.relative_to(local)): p.read_bytes()
            for p in files
            if not str(p.relative_to(local)).startswith("fcnpipe/")
        }
        same += remote == mine and len(mine) > 0
    print(f"mosaics identical to their single run: {same} of {len(picks)} checked")
    subprocess.run([sys.executable, "-m", "fcnpipe", "api", "stop"], cwd=HERE, env=env, capture_output=True)
    server.stop()


if __name__ == "__main__":
    main()
