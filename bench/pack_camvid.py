"""Pack CamVid small enough to travel to a GPU machine (one carry is at most 64 MiB).

The copy in ../shared/data/camvid is 122 MB of PNG. This writes the images as JPEG (quality 95 by
default), copies the label PNGs unchanged, and rewrites the list files to point at the JPEGs, so
the ``camvid`` reader reads the copy as it reads the original. JPEG is lossy: record the quality
beside any figure trained on a packed copy.

    uv run python bench/pack_camvid.py ../shared/data/camvid .data/camvid
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--quality", type=int, default=95)
    args = parser.parse_args()
    for listing in sorted(args.source.glob("*.txt")):
        lines = []
        for line in listing.read_text().split("\n"):
            if not line.strip():
                continue
            image, label = line.split()
            jpeg = str(Path(image).with_suffix(".jpg"))
            (args.target / jpeg).parent.mkdir(parents=True, exist_ok=True)
            (args.target / label).parent.mkdir(parents=True, exist_ok=True)
            Image.open(args.source / image).convert("RGB").save(args.target / jpeg, quality=args.quality)
            shutil.copyfile(args.source / label, args.target / label)
            lines.append(f"{jpeg} {label}")
        (args.target / listing.name).write_text("\n".join(lines) + "\n")
    size = sum(p.stat().st_size for p in args.target.rglob("*") if p.is_file())
    print(f"wrote {args.target}: {size / 2**20:.1f} MiB (JPEG quality {args.quality})")


if __name__ == "__main__":
    main()
