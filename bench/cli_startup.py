"""Start-up cost of the ``raytide`` command line, as whole processes.

Runs ``raytide --help``, ``raytide check-config <example>`` and ``raytide policies``, each round in turn with
the baseline ``python -c "import typer, rich"`` (the order rotates every round), and reports per command the
median wall time, the median peak RSS and the ratio of the median time to the baseline's (target: at most
2). For reference it also times a two-command typer app's ``--help``: the part any typer app pays for its
help. Progress goes to stderr; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_RATIO = 2.0

_TYPER_APP = """\
import typer

app = typer.Typer(no_args_is_help=True, add_completion=False)


@app.command()
def one(x: int = 1) -> None:
    \"\"\"The first command.\"\"\"


@app.command()
def two() -> None:
    \"\"\"The second command.\"\"\"


app()
"""


def _raytide() -> list[str]:
    exe = Path(sys.executable).with_name("raytide")
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-c", "from autoscaler.app.cli import main; main()"]


def _example_config() -> str:
    # Read in a child: this process stays small, since a child's peak RSS counts what it had before exec.
    code = "from autoscaler.core.config import EXAMPLE_CONFIG; print(EXAMPLE_CONFIG, end='')"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout


def _run(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one process; raises if it fails."""
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        # wait4, not wait: it also returns the child's own resource usage (peak RSS).
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            tail = err.read().decode(errors="replace")[-2000:]
            raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{tail}")
    return elapsed, usage.ru_maxrss / 1024.0  # ru_maxrss is in KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=7, help="Runs of each command and of the baseline (>= 5).")
    ap.add_argument(
        "--config", type=Path, default=None, help="Configuration to check (default: the embedded example)."
    )
    args = ap.parse_args()
    if args.runs < 5:
        ap.error("--runs must be >= 5")

    with tempfile.TemporaryDirectory(prefix="raytide-cli-bench-") as scratch:
        config = args.config
        if config is None:
            config = Path(scratch) / "raytide.yaml"
            config.write_text(_example_config(), encoding="utf-8")
        typer_app = Path(scratch) / "typer_app.py"
        typer_app.write_text(_TYPER_APP, encoding="utf-8")
        raytide = _raytide()
        commands = {
            "baseline": [sys.executable, "-c", "import typer, rich"],
            "typer_app_help": [sys.executable, str(typer_app), "--help"],
            "help": [*raytide, "--help"],
            "check_config": [*raytide, "check-config", str(config)],
            "policies": [*raytide, "policies"],
        }
        names = list(commands)
        times: dict[str, list[float]] = {n: [] for n in names}
        rss: dict[str, list[float]] = {n: [] for n in names}
        for r in range(args.runs):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                seconds, mib = _run(commands[name])
                times[name].append(seconds)
                rss[name].append(mib)
            print(
                f"round {r + 1}/{args.runs}: " + ", ".join(f"{n} {times[n][-1]:.3f} s" for n in names),
                file=sys.stderr,
            )

    base = statistics.median(times["baseline"])
    doc: dict[str, object] = {
        "bench": "cli_startup",
        "runs": args.runs,
        "baseline": 'python -c "import typer, rich"',
        "baseline_median_s": round(base, 4),
        "baseline_peak_rss_mib": round(statistics.median(rss["baseline"]), 1),
        "target_ratio": TARGET_RATIO,
    }
    worst = 0.0
    for name in names[1:]:
        if name == "typer_app_help":
            doc[name] = {
                "median_s": round(statistics.median(times[name]), 4),
                "ratio": round(statistics.median(times[name]) / base, 2),
            }
            continue
        median = statistics.median(times[name])
        ratio = median / base
        worst = max(worst, ratio)
        doc[name] = {
            "median_s": round(median, 4),
            "ratio": round(ratio, 2),
            "peak_rss_mib": round(statistics.median(rss[name]), 1),
        }
    doc["worst_ratio"] = round(worst, 2)
    doc["within_target"] = worst <= TARGET_RATIO
    print(json.dumps(doc))


if __name__ == "__main__":
    main()
