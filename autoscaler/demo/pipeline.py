"""The pipeline behind ``raytide demo``: bursts of work through a CPU ``decode`` stage and a GPU ``Infer``
actor pool, as a Ray Data job. Run as its own driver process::

    python -m autoscaler.demo.pipeline --address HOST:PORT --bursts 40,40 --gap 15

Each burst is one dataset: ``range`` → ``map_batches(decode, num_cpus=1)`` → ``map_batches(Infer,
num_gpus=1, compute=ActorPoolStrategy(min_size=1, max_size=max_actors))``. The work is ``time.sleep``: one
batch (one block) takes ``--decode-seconds`` on a CPU and ``--infer-seconds`` on a (fake) GPU, so the GPU
stage is the bottleneck and its actor pool can only grow when GPU nodes appear. Between bursts the input is
idle for ``--gap`` seconds. Prints one line per burst; exits 0 when every burst went through.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any

__all__ = ["main"]

ROWS_PER_BLOCK = 4


def _decode_fn(seconds: float) -> Any:
    def decode(batch: dict[str, Any]) -> dict[str, Any]:
        time.sleep(seconds)
        return batch

    return decode


class Infer:
    """One (fake) GPU model replica: a sleep per batch."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        time.sleep(self.seconds)
        return batch


def run_burst(blocks: int, *, decode_s: float, infer_s: float, max_actors: int, infer: bool = True) -> int:
    """One dataset through both stages (``infer=False``: decode only); returns the rows that came out."""
    import ray.data
    from ray.data import ActorPoolStrategy

    ds = ray.data.range(blocks * ROWS_PER_BLOCK, override_num_blocks=blocks)
    ds = ds.map_batches(_decode_fn(decode_s), batch_size=ROWS_PER_BLOCK, num_cpus=1)
    if infer:
        ds = ds.map_batches(
            Infer,
            fn_constructor_args=(infer_s,),
            batch_size=ROWS_PER_BLOCK,
            num_cpus=1,
            num_gpus=1,
            compute=ActorPoolStrategy(min_size=1, max_size=max_actors),
        )
    rows = 0
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        rows += len(batch["id"])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True, help="GCS host:port of the cluster")
    parser.add_argument("--bursts", default="40,40", help="blocks per burst, comma-separated")
    parser.add_argument("--gap", type=float, default=15.0, help="idle seconds between bursts")
    parser.add_argument("--decode-seconds", type=float, default=0.5)
    parser.add_argument("--infer-seconds", type=float, default=1.0)
    parser.add_argument("--max-actors", type=int, default=3)
    parser.add_argument("--no-infer", action="store_true", help="run the CPU decode stage only")
    args = parser.parse_args(argv)
    bursts = [int(b) for b in args.bursts.split(",") if b.strip()]

    import ray

    ray.init(address=args.address, logging_level=logging.WARNING, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    try:
        for i, blocks in enumerate(bursts):
            if i:
                print(f"pipeline: idle for {args.gap:g} s", flush=True)
                time.sleep(args.gap)
            t0 = time.monotonic()
            print(f"pipeline: burst {i + 1}/{len(bursts)}: {blocks} blocks", flush=True)
            rows = run_burst(
                blocks,
                decode_s=args.decode_seconds,
                infer_s=args.infer_seconds,
                max_actors=args.max_actors,
                infer=not args.no_infer,
            )
            print(
                f"pipeline: burst {i + 1} done: {rows} rows in {time.monotonic() - t0:.1f} s",
                flush=True,
            )
    finally:
        ray.shutdown()
    print("pipeline: all bursts done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
