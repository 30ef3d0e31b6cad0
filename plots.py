"""A run's metrics.jsonl read back, and its figures drawn with matplotlib: the training curves (loss and lr against the
global iteration, AP against the epoch), COCO's PR breakdown into error types and the confusion matrix.

Used by curves.py (the curves as PNG files) and reporting.py (every figure, inlined in report.html). Runs that were
killed and resumed log some iterations twice; the later run's records win (see latest_history). matplotlib is an
optional extra (pip install -r requirements-extras.txt), imported only when a figure is drawn; this module needs
neither torch nor matplotlib to read records. A problem the user can fix is a PlotsError.
"""

import json
import sys
from pathlib import Path

import numpy as np

METRICS_FILE = "metrics.jsonl"  # metrics_log.METRICS_FILE; not imported, so that reading does not need torch
AP_NAMES = ("AP", "AP50", "AP75")
# What each record type (metrics_log.py lists them) needs to be read; a line without these is unreadable.
REQUIRED_FIELDS = {
    "train": ("epoch", "iteration", "global_iteration", "lr", "loss", "losses"),
    "eval": ("epoch",),
    "test": (),
    "run": ("flags",),
    "analysis": ("epoch", "categories"),
}
CURVE_TYPES = ("train", "eval")  # the records of training's history (latest_history)
WRITER_PREFIX = '{"type": '  # how metrics_log.JsonlWriter starts every line: a line that fails to parse and starts so
# was cut off by a killed run


class RecordsError(Exception):
    """A problem the user can fix; the scripts print it as one line and exit with status 2."""


def metrics_path(path: str | Path) -> Path:
    """The metrics file itself, or the one inside a run's output folder."""
    path = Path(path)
    return path / METRICS_FILE if path.is_dir() else path


def read_records(path: Path, strict: bool = False) -> list[dict]:
    """Every record of a metrics.jsonl, in file order; a file without records is an error. A line cut off when a run
    was killed is skipped with a warning; so is any other unreadable line, or with `strict` it is an error."""
    if not path.is_file():
        raise RecordsError(f"{path}: no such file; pass a training run's --output-dir or its metrics.jsonl")
    records, skipped = [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            record = _parse(line)
            if record is not None:
                records.append(record)
            elif strict and line.strip() and not line.startswith(WRITER_PREFIX):
                raise RecordsError(f"{path}: line {number} is not a metrics record (one JSON object per line, as "
                                   "train.py writes them); fix or delete that line")  # fmt: skip
            elif line.strip():
                skipped.append(number)
    if not records:
        raise RecordsError(f"{path}: no metrics records in it (one JSON object per line, written by train.py)")
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
    for record in (r for r in records if r["type"] in CURVE_TYPES):
        while history and _position(history[-1]) >= _position(record):
            history.pop()
        history.append(record)
    return history


def pyplot():
    """matplotlib's pyplot with the Agg backend (no display needed); matplotlib is an optional extra."""
    try:
        import matplotlib
    except ImportError:
        raise RecordsError(
            "drawing figures needs matplotlib: pip install matplotlib (or pip install -r requirements-extras.txt)"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(figure, destination) -> None:
    """Write `figure` as a PNG to a path or a binary file (an io.BytesIO, for a page)."""
    figure.tight_layout()
    figure.savefig(destination, format="png", dpi=100)


def plot_losses(plt, train: list[dict]):
    """The total loss and each loss term against the global iteration."""
    figure, axes = plt.subplots(figsize=(8, 5))
    steps = [r["global_iteration"] for r in train]
    axes.plot(steps, [_number(r["loss"]) for r in train], label="loss", linewidth=2, color="black")
    for name in dict.fromkeys(name for r in train for name in r["losses"]):
        axes.plot(steps, [_number(r["losses"].get(name)) for r in train], label=name, linewidth=1)
    axes.set(xlabel="iteration", ylabel="loss", title="Training losses")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return figure


def plot_lr(plt, train: list[dict]):
    figure, axes = plt.subplots(figsize=(8, 3.5))
    axes.plot([r["global_iteration"] for r in train], [_number(r["lr"]) for r in train], color="tab:blue")
    axes.set(xlabel="iteration", ylabel="lr", title="Learning rate")
    axes.grid(alpha=0.3)
    return figure


def scored_iou_types(record: dict) -> list[str]:
    """The groups of numbers an evaluation record holds (an IoU type for COCO's evaluator: bbox, segm, keypoints; a
    custom evaluator's own), leaving out groups of groups (per_category)."""
    return [key for key, value in record.items()
            if isinstance(value, dict) and any(_is_number(v) for v in value.values())]  # fmt: skip


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def plot_ap(plt, evals: list[dict]):
    """AP, AP50 and AP75 against the epoch, one panel per IoU type (bbox, segm); for a group without them (a custom
    evaluator's), its first number."""
    iou_types = list(dict.fromkeys(t for r in evals for t in scored_iou_types(r)))
    figure, panels = plt.subplots(1, len(iou_types), figsize=(5 * len(iou_types), 4), squeeze=False)
    for axes, iou_type in zip(panels[0], iou_types):
        scored = [r for r in evals if iou_type in r]
        group = scored[-1][iou_type]
        names = [n for n in AP_NAMES if n in group] or [next(k for k, v in group.items() if _is_number(v))]
        for name in names:
            axes.plot(
                [r["epoch"] for r in scored], [_number(r[iou_type].get(name)) for r in scored], marker="o", label=name
            )
        axes.set(xlabel="epoch", ylabel="precision", title=f"{iou_type} AP", ylim=(0, 1))
        axes.xaxis.get_major_locator().set_params(integer=True)
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    return figure


def curve_figures(plt, history: list[dict]) -> dict:
    """The training curves of latest_history's records, by name: loss and lr (with training records), ap (with
    evaluation records)."""
    train = [r for r in history if r["type"] == "train"]
    evals = [r for r in history if r["type"] == "eval"]
    figures = {"loss": plot_losses(plt, train), "lr": plot_lr(plt, train)} if train else {}
    if any(scored_iou_types(r) for r in evals):
        figures["ap"] = plot_ap(plt, evals)
    return figures


# COCO analyze()'s colours, C75 to FN, its PR breakdown filled from the best curve down.
STAGE_COLORS = ("#ffffff", "#c8c8c8", "#1f77b4", "#2ca02c", "#d62728", "#ff7f0e", "#9467bd")


def plot_pr_breakdown(plt, summary: dict, title: str):
    """COCO analyze()'s figure: the stages' PR curves (analysis.summary's "curves"), each area labelled with its AP."""
    figure, axes = plt.subplots(figsize=(5.5, 4.5))
    stages = list(summary["curves"])
    recall = [i / 100 for i in range(101)]
    for stage, color in reversed(list(zip(stages, STAGE_COLORS))):
        curve = summary["curves"][stage]
        if curve:
            axes.fill_between(recall, curve, color=color, edgecolor="black", linewidth=0.5,
                              label=f"[{summary['ap'][stage]:.3f}] {stage}")  # fmt: skip
    handles, labels = axes.get_legend_handles_labels()
    axes.legend(handles[::-1], labels[::-1], loc="lower left", fontsize="small")
    axes.set(xlabel="recall", ylabel="precision", title=title, xlim=(0, 1), ylim=(0, 1.01))
    return figure


def plot_confusion(plt, counts: list[list[int]], names: list[str], title: str):
    """A confusion matrix (rows: objects by category, then background; columns: detections), each cell's count
    written in it, coloured by the share of its row."""
    values = np.asarray(counts, dtype=float)
    labels = [*names, "background"]
    shares = values / np.maximum(values.sum(axis=1, keepdims=True), 1)
    side = max(4.0, 0.45 * len(labels) + 2)
    figure, axes = plt.subplots(figsize=(side + 1, side))
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    if len(labels) <= 30:  # beyond that the counts would not be legible
        for (i, j), count in np.ndenumerate(values):
            if count:
                axes.text(j, i, f"{int(count)}", ha="center", va="center", fontsize="small",
                          color="white" if shares[i, j] > 0.5 else "black")  # fmt: skip
    axes.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize="small")
    axes.set_yticks(range(len(labels)), labels, fontsize="small")
    axes.set(xlabel="detected as", ylabel="object", title=title)
    figure.colorbar(image, ax=axes, fraction=0.046, label="share of the row")
    return figure


def write_curves(metrics: Path, out_dir: Path) -> list[Path]:
    """Write loss.png and lr.png (with training records) and ap.png (with evaluation records); returns their paths."""
    history = latest_history(read_records(metrics))
    plt = pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, figure in curve_figures(plt, history).items():
        written.append(out_dir / f"{name}.png")
        save_png(figure, written[-1])
    if not any(r["type"] == "eval" for r in history):
        print(f"{metrics}: no evaluation yet (it comes after each epoch): ap.png not written")
    plt.close("all")
    return written
