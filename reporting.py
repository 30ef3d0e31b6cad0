"""A run's report page: report.html in its output directory, one self-contained file (figures and pictures inlined, no
network), built from what the run recorded in metrics.jsonl (metrics_log.py lists the records).

It shows the run (commands, flags, data, time), its training curves, the AP tables (sortable), the error analysis
(COCO's PR breakdown, the AP each kind of error costs, the confusion matrix) and a gallery of the validation images
with the most errors, ground truth beside the detections. What a run did not record (an older run, one still
training, --no-report, no matplotlib) is said on the page, in its place. engine.py writes the page at the end of
training and of --test-only; report.py writes it for any run directory. Plain HTML and CSS, and a few lines of
JavaScript that sort a table when its header is clicked.
"""

import base64
import datetime
import html
import io
import json
from pathlib import Path
from typing import Any

from PIL import Image

import plots
from analysis import ERROR_COSTS, STAGES
from coco_eval import COCO_STAT_NAMES
from images import IMAGE_READ_ERRORS, UnreadableImage, read_rgb
from plots import RecordsError

REPORT_FILE = "report.html"
GALLERY_UPSCALE = 256  # small images are enlarged for the gallery, so that captions stay legible (predict.py's flag)


def write_report(run_dir: Path) -> Path:
    """Write `run_dir`/report.html from the run's records; a RecordsError if `run_dir` holds no run or its
    metrics.jsonl has a line that is not a record."""
    page = build_page(run_dir)
    path = run_dir / REPORT_FILE
    tmp = path.with_name(f".{REPORT_FILE}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)  # a reader never sees half a page
    return path


def build_page(run_dir: Path) -> str:
    """The report page of the run in `run_dir`, as HTML."""
    metrics = run_dir / plots.METRICS_FILE
    if not run_dir.is_dir() or not metrics.is_file():
        raise RecordsError(f"{run_dir}: not a run directory (no {plots.METRICS_FILE} in it); pass train.py's "
                           "--output-dir of a run")  # fmt: skip
    records = plots.read_records(metrics, strict=True)
    missing: list[str] = []
    sections = [
        _run_section(records, missing),
        _curves_section(records, missing),
        _scores_section(records, missing),
        *_analysis_sections(records, missing),
    ]
    title = f"Report: {run_dir.resolve().name}"
    made = _when(datetime.datetime.now(datetime.timezone.utc).timestamp())
    lacking = "".join(f"<li>{html.escape(m)}</li>" for m in missing)
    summary = f'<section class="missing"><h2>Not in this report</h2><ul>{lacking}</ul></section>' if missing else ""
    return PAGE.format(title=html.escape(title), made=made, summary=summary, sections="\n".join(sections),
                       style=STYLE, script=SCRIPT)  # fmt: skip


# ----------------------------------------------------------------------------- the run


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "?"
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {seconds:02d} s"


def _run_section(records: list[dict], missing: list[str]) -> str:
    runs = [r for r in records if r["type"] == "run"]
    stamps = [r["timestamp"] for r in records if isinstance(r.get("timestamp"), int | float)]
    span = f"{_when(min(stamps))} to {_when(max(stamps))} ({_duration(max(stamps) - min(stamps))})" if stamps else "?"
    parts = [f"<p>Recorded from {span}.</p>"]
    if not runs:
        missing.append("the run's command and flags: runs before report pages did not record them (checkpoint.pth "
                       "holds the flags)")  # fmt: skip
        return _section("Run", "".join(parts) + '<p class="missing">No command or flags recorded.</p>')
    commands = "".join(
        f"<li><code>{html.escape(' '.join(r['command']) if r.get('command') else '(main() called from Python)')}"
        f"</code> <small>{_when(r.get('timestamp'))}</small></li>"
        for r in runs
    )
    parts.append(f"<h3>Commands</h3><ol>{commands}</ol>")
    flags = runs[-1]["flags"]
    parts.append(f"<h3>Data</h3>{_table(['flag', 'value'], _data_rows(flags), sortable=False)}")
    rows = [[name, _shown(value)] for name, value in sorted(flags.items())]
    flags_table = _table(["flag", "value"], rows, sortable=False)
    parts.append(f"<details><summary>All flags of the last command</summary>{flags_table}</details>")
    return _section("Run", "".join(parts))


DATA_FLAGS = ("dataset", "data_path", "train_annotations", "train_images", "val_annotations", "val_images",
              "annotation_format", "label_mapping", "model", "weights", "weights_backbone")  # fmt: skip


def _data_rows(flags: dict) -> list[list[str]]:
    return [[name, _shown(flags[name])] for name in DATA_FLAGS if flags.get(name) not in (None, "", [])]


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


# ----------------------------------------------------------------------------- curves and scores


def _curves_section(records: list[dict], missing: list[str]) -> str:
    history = plots.latest_history(records)
    if not history:
        missing.append("training curves: no training or evaluation records (a --test-only run)")
        return _section("Training curves", '<p class="missing">No training records.</p>')
    plt = _pyplot_or_none(missing, "training curves")
    if plt is None:
        return _section("Training curves", '<p class="missing">No figures: matplotlib is not installed.</p>')
    figures = plots.curve_figures(plt, history)
    body = "".join(_figure(figure, f"{name} curve") for name, figure in figures.items())
    if "ap" not in figures:
        missing.append("the AP curve: no evaluation recorded yet")
    plt.close("all")
    return _section("Training curves", f'<div class="figures">{body}</div>')


def _pyplot_or_none(missing: list[str], what: str):
    try:
        return plots.pyplot()
    except RecordsError as e:
        missing.append(f"{what}: {e}")
        return None


def _scores_section(records: list[dict], missing: list[str]) -> str:
    scored = [r for r in records if r["type"] in ("eval", "test")]
    if not scored:
        missing.append("AP tables: no evaluation recorded yet")
        return _section("AP", '<p class="missing">No evaluation recorded.</p>')
    last = scored[-1]
    where = f"epoch {last['epoch']}" if last["type"] == "eval" else f"--test-only of {last.get('weights') or '?'}"
    parts = [f"<p>The last evaluation: {html.escape(where)}, {_when(last.get('timestamp'))}.</p>"]
    iou_types = plots.scored_iou_types(last)
    names = [n for t in iou_types for n in COCO_STAT_NAMES.get(t, last[t])]
    columns = list(dict.fromkeys(names))
    rows = [[t, *(_number(last[t].get(n)) for n in columns)] for t in iou_types]
    parts.append(_table(["IoU type", *columns], rows, sortable=False))
    for iou_type, table in (last.get("per_category") or {}).items():
        stat_names = list(dict.fromkeys(n for values in table.values() for n in values))
        rows = [[name, *(_number(values.get(n)) for n in stat_names)] for name, values in table.items()]
        parts.append(f"<h3>{html.escape(iou_type)} per category</h3>{_table(['category', *stat_names], rows)}")
    return _section("AP", "".join(parts))


def _number(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "n/a" if value == -1 else f"{value:.3f}"
    return str(value)


# ----------------------------------------------------------------------------- the error analysis and the gallery


def _analysis_sections(records: list[dict], missing: list[str]) -> list[str]:
    analyses = [r for r in records if r["type"] == "analysis"]
    if not analyses:
        missing.append("the error analysis, the confusion matrix and the gallery: recorded after the last epoch's "
                       "evaluation and by --test-only (this run is older, still training, or ran with --no-report); "
                       "to add them: train.py --test-only --resume RUN/checkpoint.pth --output-dir RUN")  # fmt: skip
        return [_section("Errors", '<p class="missing">No error analysis recorded.</p>')]
    record = analyses[-1]
    plt = _pyplot_or_none(missing, "the PR breakdown and confusion matrix figures")
    where = f"epoch {record['epoch']}" if record["of"] == "eval" else "the --test-only evaluation"
    names = [c["name"] for c in record["categories"]]
    parts = [f"<p>Of {html.escape(where)}, {record.get('images', '?')} images, {_when(record.get('timestamp'))}. "
             f"The confusion matrix and the gallery count detections scoring at least {record['score_threshold']:g} "
             f"and matches at IoU {record['iou_threshold']:g} or more.</p>"]  # fmt: skip
    for iou_type in (t for t in ("bbox", "segm") if t in record):
        parts.append(_iou_type_analysis(record[iou_type], iou_type, names, plt))
    if plt is not None:
        plt.close("all")
    return [_section("Errors", "".join(parts)), _gallery_section(record, missing)]


def _iou_type_analysis(summary: dict, iou_type: str, names: list[str], plt) -> str:
    stages = _table(["", *STAGES], [["AP", *(_number(summary["ap"][s]) for s in STAGES)]], sortable=False)
    costs = [[kind, f"{value:+.3f}"] for kind, value in summary["costs"].items()]
    costs = _table(["fixing every ...", "adds AP"], costs, sortable=False)
    kinds = list(ERROR_COSTS)
    rows = [[name, values["objects"], *(_number(values["ap"][s]) for s in ("C75", "C50")),
             *(f"{values['costs'][k]:+.3f}" for k in kinds)]
            for name, values in summary["per_category"].items()]  # fmt: skip
    per_category = _table(["category", "objects", "AP75", "AP50", *kinds], rows)
    figures = ""
    if plt is not None:
        figures = _figure(
            plots.plot_pr_breakdown(plt, summary, f"{iou_type}: PR breakdown"), f"{iou_type} PR breakdown"
        )
        figures += _figure(plots.plot_confusion(plt, summary["confusion"], names, f"{iou_type}: confusion matrix"),
                           f"{iou_type} confusion matrix")  # fmt: skip
    return (f"<h3>{html.escape(iou_type)}</h3>{stages}{costs}<div class=\"figures\">{figures}</div>"
            f"<h4>Per category: the AP each kind of error costs</h4>{per_category}")  # fmt: skip


def _gallery_section(record: dict, missing: list[str]) -> str:
    worst = record.get("worst_images") or []
    if not worst:
        return _section("Worst images", "<p>No image has an error at these thresholds.</p>")
    names = {c["id"]: c["name"] for c in record["categories"]}
    cards = []
    for entry in worst:
        counts = f"{entry['missed']} missed, {entry['background']} on background, {entry['confused']} confused"
        caption = f"<figcaption><b>{html.escape(entry['file_name'])}</b>: {counts}</figcaption>"
        try:
            picture = _gallery_picture(entry, names)
        except (UnreadableImage, FileNotFoundError, *IMAGE_READ_ERRORS) as e:
            missing.append(f"the picture of {entry['file_name']}: {e}")
            cards.append(f'<figure>{caption}<p class="missing">Cannot read {html.escape(str(entry.get("path")))}'
                         "</p></figure>")  # fmt: skip
            continue
        cards.append(f'<figure><img src="{picture}" alt="{html.escape(entry["file_name"])}">{caption}</figure>')
    intro = "<p>Ground truth on the left, detections on the right; the images with the most errors first.</p>"
    return _section("Worst images", f'{intro}<div class="gallery">{"".join(cards)}</div>')


def _gallery_picture(entry: dict, names: dict[int, str]) -> str:
    """One worst image as ground truth beside detections (pictures.py, as predict.py --ground-truth draws them)."""
    from torchvision.transforms.v2 import functional as F  # torch only here: the rest of the page needs none

    import pictures

    if not entry.get("path"):
        raise FileNotFoundError("the evaluation did not say where its images are")
    image = F.pil_to_tensor(read_rgb(Path(entry["path"])))
    left = pictures.draw_entries(image, entry["objects"], names, GALLERY_UPSCALE)
    right = pictures.draw_entries(image, entry["detections"], names, GALLERY_UPSCALE)
    return _data_uri(F.to_pil_image(pictures.side_by_side(left, right)), "JPEG")


# ----------------------------------------------------------------------------- HTML


def _data_uri(image: Image.Image, kind: str) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=kind, **({"quality": 90} if kind == "JPEG" else {}))
    return f"data:image/{kind.lower()};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def _figure(figure, alt: str) -> str:
    buffer = io.BytesIO()
    plots.save_png(figure, buffer)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _table(header: list[str], rows: list[list[Any]], sortable: bool = True) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    kind = ' class="sortable"' if sortable else ""
    return f'<div class="scroll"><table{kind}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _section(title: str, body: str) -> str:
    return f"<section><h2>{html.escape(title)}</h2>{body}</section>"


STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; padding: 0 12px 40px; max-width: 1200px; color: #222; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 4px; margin-top: 1.8em; }
code { background: #f3f3f3; padding: 1px 4px; word-break: break-all; }
.scroll { overflow-x: auto; margin: 8px 0; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
table.sortable th { cursor: pointer; background: #f3f3f3; } table.sortable th:hover { background: #e4e4e4; }
img { max-width: 100%; height: auto; }
.figures { display: flex; flex-wrap: wrap; gap: 12px; } .figures img { max-width: min(100%, 640px); }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(320px, 1fr)); gap: 16px; }
figure { margin: 0; } figcaption { font-size: 0.9em; }
.missing { color: #8a4b00; }
"""

# Click a header to sort its table by that column (numbers as numbers), again to reverse.
SCRIPT = """
document.querySelectorAll("table.sortable th").forEach(function (th) {
  th.addEventListener("click", function () {
    var body = th.closest("table").tBodies[0], column = th.cellIndex, up = th.dataset.order !== "up";
    var key = function (row) { var t = row.cells[column].textContent, n = parseFloat(t); return isNaN(n) ? t : n; };
    var rows = Array.prototype.slice.call(body.rows).sort(function (a, b) {
      var x = key(a), y = key(b); return (x < y ? -1 : x > y ? 1 : 0) * (up ? 1 : -1);
    });
    th.dataset.order = up ? "up" : "down";
    rows.forEach(function (row) { body.appendChild(row); });
  });
});
"""

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{style}</style>
</head>
<body>
<h1>{title}</h1>
<p><small>Made {made} from metrics.jsonl.</small></p>
{summary}
{sections}
<script>{script}</script>
</body>
</html>
"""
