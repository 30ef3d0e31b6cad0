"""Turn a training run's metrics.jsonl into PNG curves: loss.png and lr.png against the global
iteration, ap.png (AP, AP50, AP75 per IoU type) against the epoch.

    python curves.py output/demo                # reads output/demo/metrics.jsonl, writes the PNGs beside it
    python curves.py run/metrics.jsonl --out plots

matplotlib is an optional extra (pip install -r requirements-extras.txt), imported only here.
Runs that were killed and resumed log some iterations twice; the later run's records win (see
latest_history). A problem the user can fix (no file, no records, no matplotlib) is one `error:`
line and exit status 2.
"""

import argparse
import json
import sys
from pathlib import Path

METRICS_FILE = "metrics.jsonl"  # metrics_log.METRICS_FILE; not imported, so that plotting does not need torch
AP_NAMES = ("AP", "AP50", "AP75")
# What each record type needs to be plotted; a line without these is skipped as unreadable.
REQUIRED_FIELDS = {"train": ("epoch", "iteration", "global_iteration", "lr", "loss", "losses"), "eval": ("epoch",)}


class CurvesError(Exception):
    """A problem the user can fix; cli() prints it as one line and exits with status 2."""


def metrics_path(path: str | Path) -> Path:
    """The metrics file itself, or the one inside a run's output folder."""
    path = Path(path)
    return path / METRICS_FILE if path.is_dir() else path


def read_records(path: Path) -> list[dict]:
    """Every record of a metrics.jsonl, in file order. Lines that are not a JSON object with a "type"
    (a line cut off when a run was killed) are skipped with a warning; a file without records is an error."""
    if not path.is_file():
        raise CurvesError(f"{path}: no such file; pass a training run's --output-dir or its metrics.jsonl")
    records, skipped = [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            record = _parse(line)
            if record is not None:
                records.append(record)
            elif line.strip():
                skipped.append(number)
    if not records:
        raise CurvesError(f"{path}: no metrics records in it (one JSON object per line, written by train.py)")
    if skipped:
        print(f"warning: {path}: skipped {len(skipped)} unreadable line(s) (line {skipped[0]} first)", file=sys.stderr)
    return records


def _parse(line: str) -> dict | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or record.get("type") not in REQUIRED_FIELDS:
        return None
    if not all(field in record for field in REQUIRED_FIELDS[record["type"]]):
        return None
    positions = [record[field] for field in ("epoch", "iteration", "global_iteration") if field in record]
    return record if all(isinstance(value, int) for value in positions) else None


def _number(value) -> float:
    """A value to plot: null (a non-finite number in the log) or a missing value is a gap."""
    return float("nan") if value is None else value


def _position(record: dict) -> tuple[float, float]:
    """Where a record falls in training: (epoch, iteration), an evaluation after its epoch's last iteration."""
    iteration = float("inf") if record["type"] == "eval" else record["iteration"]
    return record["epoch"], iteration


def latest_history(records: list[dict]) -> list[dict]:
    """The records of the run as it finally went. A record at or before an earlier one's position marks a
    restart (a resumed run logs again what a killed run logged after its last checkpoint, or a run resumed
    from an older checkpoint goes back further): the later records replace everything from that position on."""
    history: list[dict] = []
    for record in records:
        while history and _position(history[-1]) >= _position(record):
            history.pop()
        history.append(record)
    return history


def _pyplot():
    """matplotlib's pyplot with the Agg backend (no display needed); matplotlib is an optional extra."""
    try:
        import matplotlib
    except ImportError:
        raise CurvesError(
            "curves.py needs matplotlib: pip install matplotlib (or pip install -r requirements-extras.txt)"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path


def plot_losses(plt, train: list[dict], path: Path) -> Path:
    """The total loss and each loss term against the global iteration."""
    figure, axes = plt.subplots(figsize=(8, 5))
    steps = [r["global_iteration"] for r in train]
    axes.plot(steps, [_number(r["loss"]) for r in train], label="loss", linewidth=2, color="black")
    for name in dict.fromkeys(name for r in train for name in r["losses"]):
        axes.plot(steps, [_number(r["losses"].get(name)) for r in train], label=name, linewidth=1)
    axes.set(xlabel="iteration", ylabel="loss", title="Training losses")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return _save(figure, path)


def plot_lr(plt, train: list[dict], path: Path) -> Path:
    figure, axes = plt.subplots(figsize=(8, 3.5))
    axes.plot([r["global_iteration"] for r in train], [_number(r["lr"]) for r in train], color="tab:blue")
    axes.set(xlabel="iteration", ylabel="lr", title="Learning rate")
    axes.grid(alpha=0.3)
    return _save(figure, path)


def plot_ap(plt, evals: list[dict], path: Path) -> Path:
    """AP, AP50 and AP75 against the epoch, one panel per IoU type (bbox, segm)."""
    iou_types = list(dict.fromkeys(key for r in evals for key, value in r.items() if isinstance(value, dict)))
    figure, panels = plt.subplots(1, len(iou_types), figsize=(5 * len(iou_types), 4), squeeze=False)
    for axes, iou_type in zip(panels[0], iou_types):
        scored = [r for r in evals if iou_type in r]
        for name in AP_NAMES:
            axes.plot(
                [r["epoch"] for r in scored], [_number(r[iou_type].get(name)) for r in scored], marker="o", label=name
            )
        axes.set(xlabel="epoch", ylabel="precision", title=f"{iou_type} AP", ylim=(0, 1))
        axes.xaxis.get_major_locator().set_params(integer=True)
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    return _save(figure, path)


def write_curves(metrics: Path, out_dir: Path) -> list[Path]:
    """Write loss.png and lr.png (with training records) and ap.png (with evaluation records); returns their paths."""
    history = latest_history(read_records(metrics))
    plt = _pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    train = [r for r in history if r["type"] == "train"]
    evals = [r for r in history if r["type"] == "eval"]
    written = []
    if train:
        written += [plot_losses(plt, train, out_dir / "loss.png"), plot_lr(plt, train, out_dir / "lr.png")]
    if evals:
        written.append(plot_ap(plt, evals, out_dir / "ap.png"))
    else:
        print(f"{metrics}: no evaluation yet (it comes after each epoch): ap.png not written")
    plt.close("all")
    return written


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
    except CurvesError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
