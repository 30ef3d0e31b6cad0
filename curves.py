"""Turn a training run's metrics.jsonl into PNG curves: loss.png and lr.png against the global
iteration, ap.png (AP, AP50, AP75 per IoU type) against the epoch.

    python curves.py output/demo                # reads output/demo/metrics.jsonl, writes the PNGs beside it
    python curves.py run/metrics.jsonl --out plots

The reading and drawing are plots.py's; matplotlib is an optional extra (pip install -r requirements-extras.txt).
A problem the user can fix (no file, no records, no matplotlib) is one `error:` line and exit status 2.
"""

import argparse
import sys
from pathlib import Path

from plots import RecordsError, metrics_path, write_curves


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Plot a training run's metrics.jsonl as PNGs (loss, lr, AP)")
    parser.add_argument(
        "metrics", metavar="OUTPUT_DIR_OR_METRICS_JSONL", help="train.py's --output-dir, or its metrics.jsonl"
    )
    parser.add_argument(
        "--out", default=None, metavar="DIR", help="where to write the PNGs (default: beside metrics.jsonl)"
    )
    args = parser.parse_args(argv)
    metrics = metrics_path(args.metrics)
    try:
        written = write_curves(metrics, Path(args.out) if args.out else metrics.parent)
    except RecordsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
