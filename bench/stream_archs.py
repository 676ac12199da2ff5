"""Every registered network streamed against its own whole-image pass (issue 22), fresh processes.

For each network a child process builds it (random weights, batch norms given running statistics
other than 0 and 1), makes one input of ``--size``² (plus the margin of mirrored pixels a U-Net
reads), and times either one whole-image forward pass or the same input pushed through
``fcn.streaming.StreamingNet`` in bands of ``--band`` rows (the tracing included), best of
``--repeats``; it reports the seconds and the peak resident memory the pass added (VmHWM, as
``fcn.memory`` reads it), and leaves its logits in a file. The parent runs the two children of a
network one after the other, alternating which goes first, and prints the time and memory of the
stream over the whole pass's and the largest |Δ logit| over the logit range. Same torch, same
threads, same input.

    uv run python bench/stream_archs.py --size 1024
    uv run python bench/stream_archs.py --size 2048 --archs fcn8s dilated8
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))

from fcn import build_model  # noqa: E402
from fcn.memory import added_peak_mib  # noqa: E402
from fcn.registry import available_models, segmentation_net  # noqa: E402
from fcn.streaming import StreamingNet  # noqa: E402


def varied(model: nn.Module, seed: int) -> nn.Module:
    """Random weights (He-scaled), batch norms with running statistics other than 0 and 1; eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            fan_in = p[0].numel() if p.dim() > 1 else 1
            p.copy_(torch.randn(p.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)  # type: ignore[operator]
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)  # type: ignore[operator]
    return model.eval()


def child(arch: str, method: str, size: int, band: int, repeats: int, classes: int, out: Path) -> None:
    """One network, one method: print its best time and the memory it added, save its logits."""
    torch.manual_seed(0)
    model = varied(build_model(arch, classes), seed=1)
    net = segmentation_net(model)
    side = size + 2 * net.margin
    x = torch.randn(1, net.in_channels, side, side, generator=torch.Generator().manual_seed(2))
    best, added = float("inf"), 0.0
    kept: dict[str, torch.Tensor] = {}

    def run() -> None:
        with torch.inference_mode():
            if method == "whole":
                y = model(x)
                kept["logits"] = y if isinstance(y, torch.Tensor) else torch.cat(list(y), dim=1)
                return
            stream = StreamingNet(model, side, side)
            rows = [stream.push(x[:, :, r : r + band], final=r + band >= side) for r in range(0, side, band)]
            kept["logits"] = torch.cat(rows, dim=2)

    for _ in range(repeats):
        kept.clear()
        start = time.perf_counter()
        added = max(added, added_peak_mib(run, torch.device("cpu")))
        best = min(best, time.perf_counter() - start)
    logits = kept["logits"]
    assert logits is not None
    np.save(out, logits[0].float().numpy())
    print(json.dumps({"seconds": best, "added_mib": added, "pixels": size * size}))


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--child", nargs=2, metavar=("ARCH", "METHOD"), help=argparse.SUPPRESS)
    parser.add_argument("--archs", nargs="*", default=[a for a in available_models() if a != "pointwise"])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--band", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--classes", type=int, default=11)
    parser.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.size, args.band, args.repeats, args.classes, args.out)
        return
    work = Path(tempfile.mkdtemp(prefix="stream-archs-"))
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(f"{args.size}² px, bands of {args.band} rows, best of {args.repeats}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; 1-minute load at the start {load}")  # fmt: skip
    print(f"{'network':18s} {'whole s':>8s} {'stream s':>9s} {'time':>6s} {'whole MiB':>10s} "
          f"{'stream MiB':>11s} {'memory':>7s} {'|Δ|/range':>10s}")  # fmt: skip
    for number, arch in enumerate(args.archs):
        results = {}
        order = ["whole", "stream"] if number % 2 == 0 else ["stream", "whole"]
        for method in order:
            out = work / f"{arch}-{method}.npy"
            command = [sys.executable, __file__, "--child", arch, method, "--size", str(args.size), "--band",
                       str(args.band), "--repeats", str(args.repeats), "--classes", str(args.classes),
                       "--out", str(out)]  # fmt: skip
            done = subprocess.run(command, capture_output=True, text=True, env=os.environ)
            if done.returncode != 0:
                print(f"{arch:18s} {method} failed: {done.stderr.strip().splitlines()[-1:]}")
                break
            results[method] = json.loads(done.stdout.strip().splitlines()[-1])
        if len(results) < 2:
            continue
        whole, stream = np.load(work / f"{arch}-whole.npy"), np.load(work / f"{arch}-stream.npy")
        error = float(np.abs(whole - stream).max() / (whole.max() - whole.min()))
        w, s = results["whole"], results["stream"]
        print(f"{arch:18s} {w['seconds']:8.2f} {s['seconds']:9.2f} {s['seconds'] / w['seconds']:6.2f} "
              f"{w['added_mib']:10.0f} {s['added_mib']:11.0f} {s['added_mib'] / max(w['added_mib'], 1):7.2f} "
              f"{error:10.1e}", flush=True)  # fmt: skip
        for method in results:
            (work / f"{arch}-{method}.npy").unlink()
    print(f"1-minute load at the end {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")


if __name__ == "__main__":
    main()
