"""The ``fcnpipe`` command line: parse, call library code, print one sentence on failure."""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from fcn.errors import FcnpipeError
from fcnpipe.flowfile import FlowFile, help_rows, parse_interval, parse_options, read_flow

app = typer.Typer(
    name="fcnpipe",
    help="Segment gigapixel images and orthophotos with fully convolutional networks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's plain help: rich's help renderer alone costs ~0.2 s to import
)
weights_app = typer.Typer(help="Make and describe model checkpoints.", no_args_is_help=True)
app.add_typer(weights_app, name="weights")
data_app = typer.Typer(help="Make the synthetic benchmark; check dataset folders.", no_args_is_help=True)
app.add_typer(data_app, name="data")
api_app = typer.Typer(
    help="The local Prefect API and the warm runner fcnpipe keeps between runs.", no_args_is_help=True
)
app.add_typer(api_app, name="api")

err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


@app.callback()
def main() -> None:
    """Segment gigapixel images and orthophotos with fully convolutional networks."""
    if not os.environ.get("FCNPIPE_DEBUG"):
        # rasterio logs each GDAL error too; the command says what went wrong in one sentence.
        logging.getLogger("rasterio").setLevel(logging.CRITICAL)


def fail(sentence: str) -> NoReturn:
    """Print one sentence and exit with status 1."""
    err.print(f"[bold red]error:[/] {sentence}", highlight=False)
    raise typer.Exit(1)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a user-caused error into one printed sentence and exit status 1."""
    try:
        yield
    except FcnpipeError as exc:
        fail(str(exc))
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            fail("the disk filled up while writing; the output is not marked complete. "
                 "Free some space and run the same command again to resume.")  # fmt: skip
        fail(f"{exc.strerror or exc} ({exc.filename or 'I/O error'}).")
    except (KeyboardInterrupt, typer.Exit):
        raise
    except Exception as exc:
        if os.environ.get("FCNPIPE_DEBUG"):
            raise
        said = (str(exc).strip().splitlines() or [""])[0]  # a library's multi-line report: its first line
        fail(
            api_failure(exc)
            or cluster_failure(exc)
            or f"{type(exc).__name__}: {said} (set FCNPIPE_DEBUG=1 for the traceback)."
        )


def cluster_failure(exc: BaseException) -> str | None:
    """One sentence for a Dask scheduler that went away mid-run, else None."""
    for seen in causes(exc):
        if type(seen).__name__ == "FutureCancelledError" and "scheduler-connection-lost" in str(seen):
            return (
                "the connection to the Dask scheduler was lost, so the run stopped; what the workers "
                "wrote is kept: with a scheduler running again, run the same command to resume."
            )
    return None


def api_failure(exc: BaseException) -> str | None:
    """One sentence for a Prefect API that stayed unavailable through every retry, else None."""
    import httpx

    for seen in causes(exc):
        if isinstance(seen, httpx.HTTPStatusError | httpx.TransportError):
            try:
                url = seen.request.url.copy_with(query=None, fragment=None)
            except RuntimeError:  # an error raised without its request
                continue
            if "/api" not in url.path:
                continue  # not Prefect's (a download, say)
            base = str(url).split("/api", 1)[0] + "/api"
            if isinstance(seen, httpx.HTTPStatusError):
                what = f"answered {seen.response.status_code} {seen.response.reason_phrase}"
            else:
                what = f"could not be reached ({type(seen).__name__})"
            retries = os.environ.get("PREFECT_CLIENT_MAX_RETRIES", "8")
            times = "retry" if retries == "1" else "retries"
            return (
                f"the Prefect API at {base} {what} through {retries} {times} (PREFECT_CLIENT_MAX_RETRIES), "
                "so the run stopped; what was written is kept: run the same command again to resume."
            )
    return None


FLOW_COMMAND = {"allow_extra_args": True, "ignore_unknown_options": True}


def read_command(ctx: typer.Context, flow_file: Path, command: str) -> tuple[FlowFile, dict[str, Any]] | None:
    """The flow file's options parsed from the command line (None after ``--help``, which it prints).

    Nothing heavy is imported: help and every option mistake answer at once.
    """
    flow = read_flow(flow_file)
    words = list(ctx.args)
    if "--help" in words or "-h" in words:
        config = words[words.index("--config") + 1] if "--config" in words[:-1] else None
        print_flow_help(command, flow, help_rows(flow, Path(config) if config else None))
        return None
    return flow, parse_options(words, flow, command)


@app.command("run", context_settings=FLOW_COMMAND, add_help_option=False)
def run(
    ctx: typer.Context,
    flow_file: Annotated[
        Path | None, typer.Argument(help="A flow file, e.g. flows/segment_mosaic.py.")
    ] = None,
) -> None:
    """Run a flow file; its parameters are options (`fcnpipe run FLOW --help` lists them)."""
    if flow_file is None or str(flow_file) in ("--help", "-h"):
        out.print(ctx.get_help())
        return
    with user_errors():
        parsed = read_command(ctx, flow_file, "run")
        if parsed is None:
            return
        flow_spec, values = parsed
        from fcnpipe import warm

        status = warm.hand_over(["run", str(flow_file), *ctx.args])
        if status is not None:
            raise typer.Exit(status)
        environ = dict(os.environ)
        try:
            result = run_here(flow_spec, values)
        finally:
            warm.start_if_absent(environ)  # for the next run
    print_summary(result)


def run_here(flow_spec: FlowFile, values: dict[str, Any]) -> Any:
    """Run the flow in this process, against the kept local API unless the user names one."""
    from flows.api import configured_api, loaded_api, local_api

    if not configured_api() and not loaded_api():
        local_api()  # a new one boots on another core while the flow's imports load torch and Prefect
    from fcnpipe.flowfile import import_flow
    from flows.runtime import prefect_session

    flow = import_flow(flow_spec)
    with stop_when_asked(), prefect_session():
        return flow(**values)


RESUME = "run the same command again to resume: what was written is kept."


@contextmanager
def stop_when_asked() -> Iterator[None]:
    """SIGINT and SIGTERM stop the run: one sentence that says how to go on, exit 130 or 143."""
    import signal

    from pipeline import stopping

    received: list[int] = []
    try:
        with stopping.on_signals(received):
            yield
    except BaseException as exc:
        if isinstance(exc, Exception) and not received:
            raise
        if isinstance(exc, typer.Exit | SystemExit):
            raise
        number = received[0] if received else getattr(exc, "signal", signal.SIGINT)
        stopping.request()
        said = str(exc) if isinstance(exc, stopping.Stopped) else next(
            (str(e) for e in causes(exc) if isinstance(e, stopping.Stopped)), ""
        )  # fmt: skip
        how = said if said and "resume" in said else RESUME
        err.print(f"stopped ({signal.Signals(number).name}); {how}", highlight=False)
        raise typer.Exit(128 + number) from None


def causes(exc: BaseException) -> Iterator[BaseException]:
    """An exception and those it came from."""
    seen: BaseException | None = exc
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__


@app.command("schedule", context_settings=FLOW_COMMAND, add_help_option=False)
def schedule(
    ctx: typer.Context,
    flow_file: Annotated[
        Path | None, typer.Argument(help="A flow file, e.g. flows/segment_batch.py.")
    ] = None,
    cron: Annotated[str | None, typer.Option(help='A cron schedule, e.g. "0 * * * *" (hourly).')] = None,
    interval: Annotated[
        str | None, typer.Option(help="Run every INTERVAL: seconds, or 30s, 10m, 2h, 1d.")
    ] = None,
    name: Annotated[str | None, typer.Option(help="The deployment's name (default: scheduled).")] = None,
) -> None:
    """Serve a flow file as a Prefect deployment that runs on a schedule, with these options.

    Needs a Prefect server (`prefect server start`) named by PREFECT_API_URL; runs until stopped
    (Ctrl-C), one run at a time: a run due while the last one still works is skipped.
    """
    if flow_file is None or str(flow_file) in ("--help", "-h"):
        out.print(ctx.get_help())
        return
    with user_errors():
        every = parse_interval(interval) if interval is not None else None
        if cron is None and every is None:
            raise FcnpipeError("say when to run: --cron EXPRESSION, --interval DURATION, or both.")
        parsed = read_command(ctx, flow_file, "schedule")
        if parsed is None:
            return
        flow_spec, values = parsed
        from fcnpipe.flowfile import import_flow
        from flows.serving import SERVING_STOPPED, serve_on_schedule

        flow = import_flow(flow_spec)
        serve_on_schedule(flow, values, name=name or "scheduled", cron=cron, interval=every, say=out.print)
        err.print(f"stopped (SIGINT); {SERVING_STOPPED}", highlight=False)
        raise typer.Exit(130)


def print_flow_help(command: str, flow: FlowFile, rows: list[tuple[str, str, str, str]]) -> None:
    """The flow's description and its options as a table (default: after the config file)."""
    table = Table(box=None, show_header=True, header_style="bold")
    table.add_column("option", no_wrap=True)
    table.add_column("type")
    table.add_column("default")
    table.add_column("description", ratio=1)
    for row in rows:
        table.add_row(*row)
    out.print(f"Usage: fcnpipe {command} {flow.path} [OPTIONS]\n\n{flow.text}\n", highlight=False)
    out.print(table, highlight=False)


def print_summary(result: Any) -> None:
    """One line for a finished flow (its warnings first)."""
    from pipeline.plan import auto_choice  # the flow has run: its modules are loaded

    if not isinstance(result, dict):
        out.print(f"done: {result}")
        return
    for note in result.get("warnings", []):
        err.print(f"[yellow]warning:[/] {note}", highlight=False)
    pieces = "strips" if result.get("strategy") == "stream" else "tiles"
    if result.get("already_complete") is True:
        out.print(f"{result['output']} is already complete; nothing to do (--overwrite makes it again).",
                  highlight=False)  # fmt: skip
    elif result.get("dry_run"):
        memory = result["peak_memory_gib"]
        budget = result["memory_budget_gib"]
        out.print(
            f"plan for {result['output']} (dry run: nothing computed or written): {result['tiles']} {pieces} "
            f"of {result['tile_size']} px with a {result['halo']} px halo in {result['blocks']} blocks "
            f"({result['blocks_to_do']} to do), batches of {result['batch_size']}; compute factor "
            f"{result['compute_factor']:.3f}; "
            + (f"peak memory about {memory:.2f} GiB of a {budget:.2f} GiB budget." if memory is not None
               else "memory not estimated (no probe for this device in the checkpoint).")
            + (f" {auto_choice(result['predicted_cost'])}." if result.get("predicted_cost") else ""),
            highlight=False,
        )  # fmt: skip
    elif "tiles" in result:
        out.print(
            f"wrote {result['output']}: {result['tiles']} {pieces} "
            f"({result['tiles_skipped']} skipped, all nodata), "
            f"{result['megapixels']:.2f} Mpx segmented in {result['seconds']:.1f} s "
            f"({result['mpx_per_s'] or 0:.3f} Mpx/s), {pieces} of {result['tile_size']} px, "
            f"compute factor {result['compute_factor']:.2f}; complete."
        )
        if result.get("cog"):
            out.print(f"wrote {result['cog']}: the labels as a Cloud-Optimized GeoTIFF.", highlight=False)
        if result.get("stac"):
            out.print(f"wrote {result['stac']}: its STAC Item (for catalogues).", highlight=False)
        if result.get("phases"):
            spent = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in result["phases"].items())
            out.print(f"time: {spent}.", highlight=False)
    elif "stages" in result:
        for stage, scores in result["stages"].items():
            out.print(f"{stage}: {scores['best']} (val mean IU {scores['mean_iu']:.3f})", highlight=False)
    else:
        out.print(", ".join(f"{k}: {v}" for k, v in result.items() if k != "warnings"))


@api_app.command("status")
def api_status() -> None:
    """Say whether the kept local Prefect API and the warm runner run, where, and since when."""
    import time

    from fcnpipe import warm
    from flows.api import answers, kept_api, state_file
    from pipeline.home import home

    record = kept_api()
    if record is None:
        out.print(f"no local Prefect API runs (the next `fcnpipe run` starts one; record: {state_file()}).")
    else:
        state = "answering" if answers(record["url"]) else "not answering"
        minutes = (time.time() - float(record.get("started", time.time()))) / 60
        out.print(f"{record['url']}: {state}, process {record['pid']}, started {minutes:.0f} min ago; "
                  "`fcnpipe api stop` stops it.", highlight=False)  # fmt: skip
    runner = warm.runner()
    if runner is None:
        said = "not running (the next `fcnpipe run` starts one)" if warm.enabled() else "off (FCNPIPE_WARM=0)"
        out.print(f"warm runner: {said}.", highlight=False)
    else:
        minutes = (time.time() - float(runner.get("started", time.time()))) / 60
        state = "ready" if runner.get("ready") else "starting"
        out.print(f"warm runner: {state}, process {runner['pid']}, started {minutes:.0f} min ago, "
                  f"log {home() / 'warm.log'}.", highlight=False)  # fmt: skip


@api_app.command("stop")
def api_stop() -> None:
    """Stop the kept local Prefect API and the warm runner (the next run starts them again)."""
    from fcnpipe import warm
    from flows.api import stop_local_api

    record = stop_local_api()
    said = f"stopped the local Prefect API at {record['url']}." if record else "no local Prefect API runs."
    out.print(said, highlight=False)
    runner = warm.stop()
    out.print(f"stopped the warm runner (process {runner['pid']})." if runner else "no warm runner runs.",
              highlight=False)  # fmt: skip


@weights_app.command("archs")
def weights_archs(
    classes: Annotated[int, typer.Option(help="Classes to count parameters for.", min=1)] = 21,
) -> None:
    """List every architecture: parameters (against its paper's), measured receptive field and halo."""
    from fcn import build_model, measure_receptive_field
    from fcn.registry import architectures, segmentation_net

    table = Table(box=None, header_style="bold")
    table.add_column("arch", no_wrap=True)  # a name to copy whole; the other columns wrap
    for column in ("parameters", "published", "receptive field", "halo", "alignment", "paper"):
        table.add_column(column)
    for name, spec in architectures().items():
        model = build_model(name, classes)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        stride, margin = segmentation_net(model).total_stride, segmentation_net(model).margin
        field = measure_receptive_field(model)
        alignment = f"{stride} px" + (f", output {margin} px short per side" if margin else "")
        published = "—" if spec.published_params_m is None else f"{spec.published_params_m:g} M"
        if spec.published_params_m is not None and spec.published_classes != classes:
            published += f" ({spec.published_classes} classes)"
        table.add_row(name, f"{params:.2f} M", published, f"{field.lo}..+{field.hi} px",
                      f"{field.halo(stride, margin)} px", alignment, spec.paper)  # fmt: skip
    out.print(table)


@weights_app.command("fetch")
def weights_fetch(
    source: Annotated[
        str,
        typer.Argument(help="The ImageNet classifier, e.g. vgg16, vgg16_bn, alexnet, googlenet."),
    ] = "vgg16",
    caffe: Annotated[
        bool, typer.Option(help="The Caffe VGG16 the FCN reference started from (BGR, 0-255, mean).")
    ] = False,
) -> None:
    """Download ImageNet weights into the torch hub cache, checked against the checksum in the code."""
    from pipeline.training.downloads import download_base, progress_bar
    from pipeline.training.sources import fetch_caffe_vgg16, fetch_imagenet

    with user_errors(), progress_bar(err.is_terminal) as progress:
        if caffe and source != "vgg16":
            raise FcnpipeError(f"--caffe is the Caffe VGG16, not {source}.")
        if caffe:
            path = fetch_caffe_vgg16(base=download_base(), progress=progress)
        else:
            path = fetch_imagenet(source, base=download_base(), progress=progress)
    use = f"--init caffe-vgg16:{path}" if caffe else "--init imagenet (it looks there)"
    what = "the Caffe VGG16 in torchvision's layout" if caffe else f"torchvision's ImageNet {source}"
    out.print(f"{path}: {what}, checksum checked; start from it with {use}.", highlight=False)


@weights_app.command("init")
def weights_init(
    arch: Annotated[str, typer.Option(help="The network (`fcnpipe weights archs` lists them).")],
    classes: Annotated[int, typer.Option(help="Number of classes the model predicts.", min=1)],
    out_path: Annotated[Path, typer.Option("--out", help="Checkpoint file to write.")],
    imagenet: Annotated[
        Path | None,
        typer.Option(
            "--imagenet",
            "--vgg16",
            help="The ImageNet classifier's torchvision weights the architecture starts from "
            "(`fcnpipe weights archs`; default: the torch hub cache).",
        ),
    ] = None,
    caffe: Annotated[
        bool, typer.Option(help="The VGG16 file is the Caffe conversion (BGR, 0-255, mean).")
    ] = False,
    random: Annotated[
        bool, typer.Option("--random", help="Random weights instead of ImageNet ones.")
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed for --random.")] = 0,
    class_names: Annotated[
        str | None, typer.Option(help="Comma-separated class names, one per class.")
    ] = None,
) -> None:
    """Write a starting checkpoint: a network initialised from its ImageNet classifier, or random."""
    from fcn import save_checkpoint
    from pipeline.training.downloads import download_base
    from pipeline.training.weights import starting_model

    with user_errors():
        names = [n.strip() for n in class_names.split(",")] if class_names else None
        model, card = starting_model(
            arch,
            classes,
            imagenet=imagenet,
            caffe=caffe,
            random_seed=seed if random else None,
            class_names=names,
            download_base=download_base(),
        )
        save_checkpoint(out_path, model, card)
    rf = card.receptive_field
    out.print(
        f"wrote {out_path}: {card.arch}, {card.num_classes} classes, init {card.provenance['init']}, "
        f"receptive field {rf.lo}..+{rf.hi} px, halo {card.halo} px"
    )


@data_app.command("make")
def data_make(
    name: Annotated[str, typer.Argument(help="The benchmark to generate: synthetic-ortho.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write (images/, labels/, splits).")],
    scenes: Annotated[int, typer.Option(help="Number of scenes (split 70/15/15).", min=1)] = 12,
    size: Annotated[int, typer.Option(help="Scene side in pixels.", min=1)] = 512,
    seed: Annotated[int, typer.Option(help="Seed: the same seed gives the same bytes.")] = 0,
) -> None:
    """Generate a bundled benchmark (georeferenced GeoTIFF scenes with label rasters)."""
    from pipeline.training.data.synthetic import make_benchmark

    with user_errors():
        if name != "synthetic-ortho":
            raise FcnpipeError(f"unknown benchmark {name!r}; the one generated on demand is synthetic-ortho.")
        root = make_benchmark(out_dir, scenes=scenes, size=size, seed=seed)
    out.print(f"wrote {scenes} scenes of {size}x{size} px to {root} (read it as synthetic-ortho:{root})")


@data_app.command("info")
def data_info(
    spec: Annotated[
        str, typer.Argument(help="NAME:PATH, e.g. camvid:/data/CamVid or vaihingen:ISPRS/Vaihingen.")
    ],
    check: Annotated[int, typer.Option(help="Samples of each split to read and check (0: none).", min=0)] = 1,
) -> None:
    """Check that a dataset folder reads: images per split, classes, and the first samples of each split."""
    from fcn.checkpoint import head_layout
    from pipeline.training.data import open_dataset

    opened = []
    for split in ("train", "val", "test"):
        try:
            data = open_dataset(spec, split)
            read = min(check, len(data))
            sizes = sorted({data[i][0].shape[:2] for i in range(read)})  # reads image and label
        except FcnpipeError as exc:
            out.print(f"{split}: not available: {exc}", highlight=False)
            continue
        checked = f" (first {read} read, {', '.join(f'{w}x{h}' for h, w in sizes)} px)" if read else ""
        out.print(f"{split}: {len(data)} images{checked}", highlight=False)
        opened.append(data)
    if not opened:
        err.print(f"[red]error:[/] no split of {spec} could be read.", highlight=False)
        raise typer.Exit(1)
    first = opened[0]
    if first.channels != 3:
        out.print(f"{first.channels} channels per image, colour first", highlight=False)
    for head in head_layout(first.head_sizes, first.num_classes):  # one line per labelling
        names, prefix = first.class_names[head.channels], f"{head.name}: " if first.head_sizes else ""
        out.print(
            f"{prefix}{head.classes} classes (ignore label {first.ignore_index}): {', '.join(names)}",
            highlight=False,
        )


@data_app.command("fetch")
def data_fetch(
    name: Annotated[
        str,
        typer.Argument(
            help="camvid, voc2012, sbd, siftflow, nyud, pascal-context, loveda, openearthmap, "
            "inria, vaihingen or potsdam."
        ),
    ],
    out_dir: Annotated[Path, typer.Option("--out", help="A new folder to unpack the dataset into.")],
) -> None:
    """Download a dataset, check it against the checksums in the code, unpack it and check it reads.

    A source with no published checksum (or one behind a registration) is not downloaded: the
    command says where to get it and where to place it.
    """
    from pipeline.training.downloads import download_base, progress_bar
    from pipeline.training.sources import fetch_dataset

    with user_errors(), progress_bar(err.is_terminal) as progress:
        source = fetch_dataset(name, out_dir, base=download_base(), progress=progress)
    spec = source.reads_as.format(out=out_dir)
    out.print(f"wrote {out_dir} (read it as {spec}); licence: {source.licence}.", highlight=False)
    if source.by_hand:
        out.print(f"still to do by hand: {source.by_hand.format(out=out_dir)}", highlight=False)
        out.print(f"then check it with: fcnpipe data info {spec}", highlight=False)
        return
    data_info(spec)


@data_app.command("scene")
def data_scene(
    out_path: Annotated[Path, typer.Option("--out", help="GeoTIFF to write, e.g. scene.tif.")],
    size: Annotated[int, typer.Option(help="Side in pixels.", min=1)] = 1024,
    seed: Annotated[int, typer.Option(help="Seed of the scene.")] = 2026,
    labels: Annotated[Path | None, typer.Option(help="Also write its label raster here.")] = None,
) -> None:
    """Write one synthetic orthophoto scene (0.5 m pixels, UTM 33N) to try the main job on."""
    from pipeline.training.data.synthetic import generate_scene, write_scene

    with user_errors():
        image, label = generate_scene(size, seed)
        label_path = labels or out_path.with_name(f".{out_path.stem}-labels.tif")
        write_scene(out_path, label_path, image, label)
        if labels is None:
            label_path.unlink()
    out.print(f"wrote {out_path}: {size}x{size} px synthetic scene (seed {seed})")


@app.command("inspect")
def inspect_mosaic(
    mosaic: Annotated[str, typer.Argument(help="A mosaic written by the segment flow (a path or URL).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Describe a mosaic: size, chunks, CRS, classes, arrays, completeness, provenance."""
    import json

    from pipeline.outputs.inspect import describe_mosaic, summary_lines

    with user_errors():
        info = describe_mosaic(mosaic)
    if as_json:
        print(json.dumps(info, indent=2))
    else:
        for line in summary_lines(info):
            out.print(line, highlight=False)


@app.command("inspect-raster")
def inspect_raster_command(
    raster: Annotated[str, typer.Argument(help="A raster: a path or a URL GDAL reads.")],
    bands: Annotated[str | None, typer.Option(help="Bands to feed the model, e.g. 1,2,3.")] = None,
    value_range: Annotated[
        str | None, typer.Option(help="LO,HI raw values mapped to 0-255 (non-8-bit rasters).")
    ] = None,
) -> None:
    """Say what the segment flow would read from a raster: size, CRS, bands and why, values, mask."""
    from pipeline.raster import describe_raster, inspect_raster
    from pipeline.settings import split_list

    with user_errors():
        chosen = tuple(int(b) for b in split_list(bands)) if bands else None
        span = tuple(float(v) for v in split_list(value_range)) if value_range else None
        if span is not None and len(span) != 2:
            raise FcnpipeError(f"--value-range takes LO,HI, not {value_range!r}.")
        info = inspect_raster(raster, bands=chosen, value_range=span)
    for line in describe_raster(info):
        out.print(line, highlight=False)
    out.print("tiles: `fcnpipe run flows/segment_mosaic.py --input … --dry-run` plans them for a model.",
              highlight=False)  # fmt: skip


@app.command("export")
def export(
    mosaic: Annotated[
        str, typer.Argument(help="A complete mosaic written by the segment flow (a path or URL).")
    ],
    cog: Annotated[
        str | None, typer.Option(help="Write a Cloud-Optimized GeoTIFF here (path or URL).")
    ] = None,
    vector: Annotated[
        str | None, typer.Option(help="Write polygons of the label regions (GeoPackage; path or URL).")
    ] = None,
    what: Annotated[
        str, typer.Option(help="For --cog: labels, probabilities, or a further head's labels (labels_HEAD).")
    ] = "labels",
    class_name: Annotated[
        str | None,
        typer.Option("--class", help="One class only: a 0/1 mask, its probability or its polygons."),
    ] = None,
    min_area: Annotated[
        float, typer.Option(help="For --vector: drop polygons smaller than this (CRS units², m² in UTM).")
    ] = 0.0,
    overwrite: Annotated[bool, typer.Option(help="Replace existing output files.")] = False,
) -> None:
    """Export a mosaic as a COG (labels with colours, or probabilities) and/or polygons."""
    from pipeline.outputs.export import export_cog, export_vector
    from pipeline.outputs.stac import attach_cog

    if cog is None and vector is None:
        fail("say what to write: --cog OUT.tif, --vector OUT.gpkg, or both.")
    with user_errors():
        if cog is not None:
            made = export_cog(mosaic, cog, what=what, class_name=class_name, overwrite=overwrite)
            levels = ", ".join(f"1/{f}" for f in made.overviews) or "none"
            out.print(f"wrote {made.path}: {made.width} x {made.height} px, {made.bands} band(s), "
                      f"overviews {levels}; a valid COG.", highlight=False)  # fmt: skip
            try:
                item = attach_cog(mosaic, made.path) if what == "labels" and class_name is None else None
            except (FcnpipeError, OSError) as exc:  # a mosaic we may read but not write (https, public)
                err.print(f"[yellow]warning:[/] the STAC Item beside the mosaic was not updated: {exc}",
                          highlight=False)  # fmt: skip
                item = None
            if item is not None:
                out.print(f"added it to the STAC Item {item.redacted()}.", highlight=False)
        if vector is not None:
            shapes = export_vector(
                mosaic, vector, class_name=class_name, min_area=min_area, overwrite=overwrite
            )
            out.print(f"wrote {shapes.path}: {shapes.polygons} polygons.", highlight=False)


if __name__ == "__main__":
    app()
