"""``voicescreen worker --ray`` and ``voicescreen export --triton``: the model beyond one machine.

``worker --ray`` deploys the bundles' models as Ray Serve applications on a cluster, for ingest
nodes (``voicescreen serve --backend ray``) that run elsewhere; ``export --triton DIR`` writes a
Triton Inference Server model repository for ``voicescreen serve --backend triton``. See
docs/deploy.md. ``add_parsers(subparsers)`` registers both.
"""

from __future__ import annotations

import argparse
import logging
import threading
from dataclasses import replace
from typing import Any

from voicescreen.cli import fail
from voicescreen.cli.serve import add_remote_arguments, ray_options_from_args

log = logging.getLogger("voicescreen")


# --- voicescreen worker --ray ------------------------------------------------------------------


def cmd_worker(args: argparse.Namespace) -> int:
    from voicescreen.runtimes import BackendError
    from voicescreen.stream.loading import load_bundles

    try:
        bundles = load_bundles(args.bundle or ())
        options = ray_options_from_args(args)
    except ValueError as e:  # LoadError is a ValueError
        return fail(str(e))
    try:
        from voicescreen.runtimes import ray as rayserve

        rayserve.connect(options.address)
        if args.delete:
            rayserve.delete(list(bundles))
            for name in bundles:
                print(f"deleted {rayserve.app_name(name)}")
            return 0
        if options.replicas is None:
            options = replace(options, replicas=1)
        for name, bundle in bundles.items():
            handle, running = rayserve.ensure_deployed(bundle, options)
            served = rayserve.describe(handle)
            print(
                f"{rayserve.app_name(name)}: {running} replica(s) of {name} "
                f"({bundle.architecture}, model.onnx sha256 {served['sha256'][:12]}, "
                f"{', '.join(served['providers'])})",
                flush=True,
            )
    except BackendError as e:
        return fail(str(e))
    if options.address == "local":  # the Ray instance lives as long as this process
        print("serving on a local Ray instance until interrupted (Ctrl-C)", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            return 0
    return 0


# --- voicescreen export --triton ---------------------------------------------------------------


def cmd_export(args: argparse.Namespace) -> int:
    from voicescreen.runtimes.triton import TritonModelOptions, write_repository
    from voicescreen.stream.loading import load_bundles

    try:
        bundles = load_bundles(args.bundle or ())
        options = TritonModelOptions(
            max_batch=args.max_batch,
            max_queue_delay_us=args.max_queue_delay_us,
            max_queue_size=args.max_queue_size,
            kind=args.kind,
            instances=args.instances,
        )
        made = write_repository(list(bundles.values()), args.triton, options)
    except (ValueError, OSError) as e:  # LoadError is a ValueError
        return fail(str(e))
    for folder in made:
        print(f"wrote {folder}")
    print(
        f"run: tritonserver --model-repository {args.triton}   "
        "(then voicescreen serve --backend triton --triton-url HOST:8001)"
    )
    return 0


# --- registration ------------------------------------------------------------------------------


def add_parsers(subparsers: Any) -> None:
    """Register ``worker`` and ``export`` on the CLI's subparsers."""
    from voicescreen.runtimes.triton import TritonModelOptions

    w = subparsers.add_parser(
        "worker",
        help="deploy the models alone, as Ray Serve replicas, for ingest nodes elsewhere",
        description="Deploy each bundle's model as a Ray Serve application "
        "(voicescreen-<name>) on the cluster; `voicescreen serve --backend ray` on the ingest "
        "nodes sends windows to it. The applications keep running after this command ends, "
        "except on --ray-address local, where it serves until interrupted.",
    )
    w.add_argument(
        "--ray", action="store_true", required=True, help="deploy on Ray Serve (the only kind)"
    )
    w.add_argument(
        "--bundle",
        action="append",
        help="bundle path or installed name; repeat for several models (default: the shipped one)",
    )
    w.add_argument("--delete", action="store_true", help="remove the bundles' applications")
    add_remote_arguments(w, ingest=False)
    w.set_defaults(func=cmd_worker)

    d = TritonModelOptions()
    e = subparsers.add_parser(
        "export",
        help="write a Triton Inference Server model repository from bundles",
        description="Write DIR/<model>/config.pbtxt (ONNX Runtime backend, dynamic batching) "
        "and DIR/<model>/1/model.onnx for each bundle.",
    )
    e.add_argument("--triton", required=True, metavar="DIR", help="the model repository to write")
    e.add_argument(
        "--bundle",
        action="append",
        help="bundle path or installed name; repeat for several models (default: the shipped one)",
    )
    e.add_argument("--max-batch", type=int, default=d.max_batch, help="max_batch_size")
    e.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=d.max_queue_delay_us,
        help="dynamic batching: longest wait for a fuller batch (microseconds)",
    )
    e.add_argument(
        "--max-queue-size",
        type=int,
        default=d.max_queue_size,
        help="requests waiting before Triton refuses more (0: unbounded)",
    )
    e.add_argument("--kind", choices=["gpu", "cpu"], default=d.kind, help="instance_group kind")
    e.add_argument("--instances", type=int, default=d.instances, help="model instances")
    e.set_defaults(func=cmd_export)
