"""Prediction on the CPU: images/s of Mask R-CNN from image to RLE-encoded masks, three ways, on the same weights,
the same images and the same number of detections.

- upstream: torchvision's eager model as its reference evaluation runs it: `model([image])`, masks pasted by
  torchvision's postprocess (paste_masks_in_image), each thresholded at 0.5 and RLE-encoded by pycocotools;
- ours eager: the same model under masks.unpasted_masks, pasted and encoded by masks.paste_masks_to_rles (what this
  project's evaluation does);
- ONNX Runtime: the same model exported by deployed.export_onnx, run by deployed.OnnxModel(threads=T) under
  returning_unpasted_masks(), then masks.paste_masks_to_rles.

The model is maskrcnn_resnet50_fpn (91 classes, random heads, the calibrated stand-in ResNet-50 of
synthetic.standin_resnet50 as its body) with box_score_thresh=0.0, so that every path returns exactly
box_detections_per_img detections. Sizes: "demo" (the demo's images, 128x96, 96x128 and 128x128, model min_size and
max_size 128, 30 detections) and "coco" (640x480 images the model resizes to 800x1066 with the default 800/1333, 100
detections). Each path is warmed up untimed, then the paths take turns, a pass over the images each, --repeats times;
the table gives the median images/s and the ratios to upstream. At COCO size the ORT graph optimisation levels are
compared in the same passes (--levels); --variants adds, at every size and thread count, the export of torchvision's
traced code without deployed.py's changes (NMS per class, the gather merge) and OpenVINO's CPU plugin on the exported
file in f32 and bf16 (deployed.OnnxModel's runtimes "openvino", "openvino-bf16"; when openvino is installed). One
COCO-size image is profiled (--no-profile skips it): where each engine's time goes, by operator.

    python benchmarks/bench_predict.py                                    # both sizes, 1 and 2 threads (~4 min)
    python benchmarks/bench_predict.py --variants                         # and the variants (~6 min)
    python benchmarks/bench_predict.py --sizes demo --threads 1 --repeats 1 --images 1 --no-profile   # smoke run
"""

import argparse
import collections
import contextlib
import datetime
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
import torchvision
import torchvision.transforms.functional as F
from pycocotools import mask as mask_utils

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench_output  # noqa: E402

import deployed  # noqa: E402
import synthetic  # noqa: E402
from labels import Classes  # noqa: E402
from masks import paste_masks_to_rles, unpasted_masks  # noqa: E402

GOAL = 1.5  # the deployed path's images/s at least 1.5x upstream's, at the same detections
MODEL = "maskrcnn_resnet50_fpn"

# pycocotools' encoder reads torch tensors through numpy's deprecated __array__ path: not ours to fix
warnings.filterwarnings("ignore", message="__array__ implementation doesn't accept a copy keyword")


@dataclass(frozen=True)
class Size:
    label: str
    model_sizes: dict  # builder keyword arguments (min_size, max_size); {} for torchvision's 800/1333
    detections: int
    images: int  # images per timed pass
    repeats: int
    image_size: tuple[int, int] | None  # (width, height) of a landscape image; None: the demo's own sizes


SIZES = {
    "demo": Size(
        "demo: 128x96, 96x128, 128x128 px, min/max_size 128", {"min_size": 128, "max_size": 128}, 30, 4, 3, None
    ),
    "coco": Size("COCO: 640x480 px, resized to 800x1066", {}, 100, 1, 2, (640, 480)),
}


def header() -> str:
    versions = []
    for package in ("torch", "torchvision", "onnxruntime", "onnx", "pycocotools", "numpy"):
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{package} missing")
    return (
        f"{datetime.date.today().isoformat()}, {platform.machine()} {bench_output._cpu_model()}, "
        f"{os.cpu_count()} cores, no GPU used; {', '.join(versions)}"
    )


def build_model(size: Size) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.get_model(
        MODEL, weights=None, weights_backbone=None, num_classes=91, box_score_thresh=0.0,
        box_detections_per_img=size.detections, **size.model_sizes,
    )  # fmt: skip
    missing, _ = model.backbone.body.load_state_dict(synthetic.standin_resnet50(), strict=False)
    assert not missing, missing  # the fc keys are the unexpected ones: the body has no classifier
    return model.eval()


def images_for(size: Size, count: int) -> list[torch.Tensor]:
    """Float (3, H, W) images in [0, 1]: the demo's shapes pictures, at COCO size resized to 640x480 (480x640 for a
    portrait one)."""
    pictures = synthetic.shapes_images(count, seed=1)
    if size.image_size is not None:
        width, height = size.image_size
        pictures = [p.resize((width, height) if p.width >= p.height else (height, width)) for p in pictures]
    return [F.to_tensor(p) for p in pictures]


def export(model: torch.nn.Module, example: torch.Tensor, folder: str, name: str = "model.onnx") -> Path:
    classes = Classes(list(range(91)), [{"id": i, "name": str(i)} for i in range(1, 91)])
    path = Path(folder) / name
    deployed.export_onnx(model, example, path, deployed.metadata_for(model, MODEL, classes, "bench_predict.py"))
    return path


@contextlib.contextmanager
def torchvision_traced_code():
    """The export before deployed.py's changes to torchvision's traced code for ONNX Runtime: one NMS over every
    class's boxes offset apart, the RoI levels merged by ScatterElements (the resize stays eager's)."""
    original = deployed._graph_for_onnx_runtime
    deployed._graph_for_onnx_runtime = deployed._exact_resize
    try:
        yield
    finally:
        deployed._graph_for_onnx_runtime = original


# ----------------------------------------------------------------------------- the three paths: image to RLEs


def upstream(model: torch.nn.Module) -> Callable:
    """torchvision's reference: full-size masks from the model, then CocoEvaluator.prepare_for_coco_segmentation."""

    @torch.inference_mode()
    def predict(image: torch.Tensor) -> dict:
        prediction = model([image])[0]
        binary = prediction["masks"] > 0.5
        rles = [mask_utils.encode(np.array(mask[0, :, :, np.newaxis], dtype=np.uint8, order="F"))[0] for mask in binary]
        for rle in rles:
            rle["counts"] = rle["counts"].decode("utf-8")
        rles = [rle["counts"].encode() for rle in rles]
        return {"boxes": prediction["boxes"], "labels": prediction["labels"], "rles": rles}

    return predict


def ours(model) -> Callable:
    """This project's evaluation: unpasted masks from the model (eager or OnnxModel), pasted and encoded in one go."""

    @torch.inference_mode()
    def predict(image: torch.Tensor) -> dict:
        with unpasted_masks(model):
            prediction = model([image])[0]
        rles = paste_masks_to_rles(prediction["raw_masks"], prediction["boxes"], prediction["image_size"])
        return {"boxes": prediction["boxes"], "labels": prediction["labels"], "rles": rles}

    return predict


def check(results: dict[str, dict], detections: int) -> dict[str, tuple[int, int]]:
    """Every path's detections count, and for each: how many of its detections upstream has too (the same label, the
    box within 0.01 px), and how many of those have upstream's RLE to the byte."""
    reference = results["upstream"]
    notes = {}
    for name, result in results.items():
        count = len(result["rles"])
        if count != detections or len(result["boxes"]) != detections:
            raise AssertionError(f"{name}: {count} detections, not {detections}")
        gap = (result["boxes"][:, None] - reference["boxes"][None]).abs().amax(dim=2)
        gap[result["labels"][:, None] != reference["labels"][None]] = float("inf")
        distance, nearest = gap.min(dim=1)
        matched = [(i, j) for i, (d, j) in enumerate(zip(distance.tolist(), nearest.tolist())) if d < 0.01]
        notes[name] = (len(matched), sum(result["rles"][i] == reference["rles"][j] for i, j in matched))
    return notes


# ----------------------------------------------------------------------------- timing


def images_per_second(predict: Callable, images: list[torch.Tensor]) -> float:
    start = time.perf_counter()
    for image in images:
        predict(image)
    return len(images) / (time.perf_counter() - start)


class OtherLoad:
    """The CPU time other processes took while the block ran, in cores on average (Linux: /proc/stat's busy time less
    this process's own); None where /proc/stat is missing. On a shared machine a row with other load is noise: a
    2-thread eager pass slows by 4x or more when another process takes one of 2 cores."""

    def __enter__(self) -> "OtherLoad":
        self.cores = None
        self._start = self._sample()
        return self

    def __exit__(self, *exc) -> None:
        end = self._sample()
        if self._start and end:
            (busy0, own0, wall0), (busy1, own1, wall1) = self._start, end
            self.cores = max(0.0, (busy1 - busy0) - (own1 - own0)) / (wall1 - wall0)

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        busy = sum(fields[:8]) - fields[3] - fields[4]  # all but idle and iowait (guest time is in user already)
        own = os.times()
        return busy / os.sysconf("SC_CLK_TCK"), own.user + own.system, time.monotonic()


def race(paths: dict[str, Callable], images: list[torch.Tensor], repeats: int) -> dict[str, float]:
    """Median images/s of each path over `repeats` passes, the paths taking turns (each pass starting one later)."""
    names = list(paths)
    rates: dict[str, list[float]] = {name: [] for name in names}
    for _, name in bench_output.in_turns(names, repeats):
        rates[name].append(images_per_second(paths[name], images))
    return {name: statistics.median(values) for name, values in rates.items()}


def warm_up(paths: dict[str, Callable], images: list[torch.Tensor], detections: int) -> dict[str, list]:
    """Each path once on one image of each shape (first-call allocations, oneDNN primitives); checks every path's
    detections and returns the first image's comparison."""
    shapes = {}
    for image in images:
        shapes.setdefault(tuple(image.shape), image)
    notes = [check({name: predict(image) for name, predict in paths.items()}, detections) for image in shapes.values()]
    return notes[0]


# ----------------------------------------------------------------------------- where the time goes


def _category(op: str) -> str:
    op = op.lower()
    for key, words in {
        "convolutions (incl. transposed)": ("conv",),
        "NMS": ("nms", "nonmaxsuppression"),
        "RoIAlign": ("roi_align", "roialign"),
        "box head FCs (Gemm)": ("addmm", "gemm", "matmul", "linear"),
        "batch norm (eager; folded into convs in ORT)": ("batch_norm",),
    }.items():
        if any(word in op for word in words):
            return key
    return "everything else"


def eager_profile(model: torch.nn.Module, image: torch.Tensor) -> tuple[float, dict[str, float]]:
    """Self CPU time by operator category for the eager model's call (masks unpasted), ms; and its wall time."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.inference_mode(), unpasted_masks(model), torch.profiler.profile(activities=activities) as profile:
        start = time.perf_counter()
        model([image])
        wall = time.perf_counter() - start
    times = collections.Counter()
    for event in profile.key_averages():
        times[_category(event.key)] += event.self_cpu_time_total / 1e3
    return wall * 1e3, times


def ort_profile(path: Path, threads: int, image: torch.Tensor, folder: str) -> tuple[float, dict[str, float]]:
    """Kernel time by operator category for one ORT run (after a warm-up run), ms; and the run's time. If nodes are
    left out: their subgraphs' nodes are reported on their own."""
    import onnxruntime as ort

    options = deployed._session_options(threads, "all")  # OnnxModel's own settings; it has no profiling switch
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(folder) / "ort_profile")
    session = ort.InferenceSession(str(path), options, ["CPUExecutionProvider"])
    feed = {deployed.INPUT: image.numpy()}
    session.run(None, feed)
    session.run(None, feed)
    events = json.loads(Path(session.end_profiling()).read_text())
    last_run = [e for e in events if e.get("name") == "model_run"][-1]
    times = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= last_run["ts"]:
            if e["args"]["op_name"] not in ("If", "Loop"):
                times[_category(e["args"]["op_name"])] += e["dur"] / 1e3
    return last_run["dur"] / 1e3, times


def print_profile(eager: tuple[float, dict], onnx: tuple[float, dict], threads: int) -> None:
    (eager_wall, eager_times), (ort_wall, ort_times) = eager, onnx
    print(f"\nWhere the model's time goes, one COCO-size image, {threads} threads (ms; eager: the model call under "
          f"unpasted_masks, {eager_wall:.0f} ms wall, by torch.profiler's self CPU time; ORT: one session run, "
          f"{ort_wall:.0f} ms, by its profiler's kernel time):\n")  # fmt: skip
    print("| operators | eager (ms) | ONNX Runtime (ms) | ORT / eager |")
    print("|---|---|---|---|")
    keys = sorted(set(eager_times) | set(ort_times), key=lambda k: -max(eager_times.get(k, 0), ort_times.get(k, 0)))
    for key in [*(k for k in keys if k != "everything else"), "everything else"]:
        a, b = eager_times.get(key, 0.0), ort_times.get(key, 0.0)
        ratio = f"{b / a:.2f}" if a > 0 and b > 0 else "—"
        print(f"| {key} | {a:.0f} | {b:.0f} | {ratio} |")
    a, b = sum(eager_times.values()), sum(ort_times.values())
    print(f"| total | {a:.0f} | {b:.0f} | {b / a:.2f} |")


# ----------------------------------------------------------------------------- main


def _row(size: Size, threads: int, rates: dict[str, float], other: float | None) -> str:
    base, eager, onnx = rates["upstream"], rates["ours eager"], rates["ONNX Runtime"]
    met = "yes" if onnx / base >= GOAL else "NO"
    return (
        f"| {size.label} | {threads} | {size.detections} | {base:.3g} | {eager:.3g} | {onnx:.3g} | "
        f"{eager / base:.2f}x | {onnx / base:.2f}x | {met} | {'?' if other is None else f'{other:.2f}'} |"
    )


def variant_paths(paths: dict, model, example: torch.Tensor, path: Path, threads: int, folder: str) -> list[tuple]:
    """--variants: adds their paths to `paths`; returns their (table text, path name)."""
    with torchvision_traced_code():
        before = export(model, example, folder, "torchvision_traced.onnx")
    paths["traced"] = ours(deployed.OnnxModel(before, threads=threads))
    variants = [("ONNX Runtime, torchvision's traced code (no NMS per class, no gather merge)", "traced")]
    if importlib.util.find_spec("openvino") is None:
        print("OpenVINO is not installed (pip install openvino): its rows are left out")
        return variants
    for runtime, precision in (("openvino", "f32"), ("openvino-bf16", "bf16")):
        paths[runtime] = ours(deployed.OnnxModel(path, threads=threads, runtime=runtime))
        variants.append((f"OpenVINO {metadata.version('openvino')}, CPU plugin, {precision}", runtime))
    return variants


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2],
                        help="torch threads for the eager paths, OnnxModel threads for ORT (and torch's for its "
                        "pasting); each in turn")  # fmt: skip
    parser.add_argument("--repeats", type=int, help="timed passes of each path (default 3 at demo size, 2 at COCO's)")
    parser.add_argument("--images", type=int, help="images per pass (default 4 at demo size, 1 at COCO's)")
    parser.add_argument("--levels", nargs="*", default=["basic", "extended"], choices=["none", "basic", "extended"],
                        help="ORT graph optimisation levels timed beside 'all' at COCO size with the most threads "
                        "(none given: skip)")  # fmt: skip
    parser.add_argument(
        "--variants",
        action="store_true",
        help="also time, at every size and thread count, the export of torchvision's traced code "
        "without deployed.py's changes, and OpenVINO (f32, bf16) on the file when it is installed",
    )
    parser.add_argument("--no-profile", action="store_true", help="skip the per-operator profile at COCO size")
    return parser.parse_args(argv)


@dataclass
class Results:
    rows: list[str]
    checks: list[str]
    variants: list[str]  # rows of the variants table
    profile: tuple | None = None


def measure_size(key: str, args: argparse.Namespace, folder: str, results: Results) -> None:
    size = SIZES[key]
    repeats, count = args.repeats or size.repeats, args.images or size.images
    model = build_model(size)
    images = images_for(size, count)
    start = time.perf_counter()
    path = export(model, images[0], folder)
    print(f"{size.label}: exported in {time.perf_counter() - start:.1f} s; {count} images a pass, {repeats} passes")
    for threads in args.threads:
        torch.set_num_threads(threads)
        paths = {"upstream": upstream(model), "ours eager": ours(model),
                 "ONNX Runtime": ours(deployed.OnnxModel(path, threads=threads))}  # fmt: skip
        variants = []
        if key == "coco" and threads == max(args.threads):
            for level in args.levels:
                name = f"ORT '{level}'"
                paths[name] = ours(deployed.OnnxModel(path, threads=threads, optimization=level))
                variants.append((f"ONNX Runtime, graph optimisation '{level}'", name))
        if args.variants:
            variants += variant_paths(paths, model, images[0], path, threads, folder)
        if variants:
            variants.insert(0, ("ONNX Runtime, graph optimisation 'all' (the table's)", "ONNX Runtime"))
        notes = warm_up(paths, images, size.detections)
        with OtherLoad() as other:
            rates = race(paths, images, repeats)
        results.rows.append(_row(size, threads, rates, other.cores))
        print(results.rows[-1], flush=True)
        found = (f"{name} {n}/{size.detections} found, {same} with its RLE" for name, (n, same) in notes.items())
        results.checks.append(f"{key}, {threads} thread(s): " + ", ".join(list(found)[1:]))
        for text, name in variants:
            results.variants.append(
                f"| {key} | {threads} | {text} | {rates[name]:.3g} | "
                f"{rates[name] / rates['upstream']:.2f}x | {notes[name][0]}/{size.detections} |"
            )
    if key == "coco" and not args.no_profile:
        torch.set_num_threads(max(args.threads))
        results.profile = (eager_profile(model, images[0]), ort_profile(path, max(args.threads), images[0], folder))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    initial_threads = torch.get_num_threads()
    started = time.perf_counter()
    print(f"Machine: {header()}")
    print(f"Model: {MODEL}, 91 classes, box_score_thresh 0.0 (fixed detections), fp32; ORT CPUExecutionProvider, "
          "graph optimisation 'all' unless named\n")  # fmt: skip
    results = Results([], [], [])
    try:
        with tempfile.TemporaryDirectory() as folder:
            for key in args.sizes:
                measure_size(key, args, folder, results)
    finally:
        torch.set_num_threads(initial_threads)
    print("\nImages/s, median of the passes (upstream: torchvision's model call with its pasting, then pycocotools "
          "mask by mask; ours: unpasted masks, masks.paste_masks_to_rles; ONNX Runtime: deployed.OnnxModel, then the "
          f"same). Goal: ONNX Runtime >= {GOAL:g}x upstream. Other load: the CPU other processes took during the "
          "timed passes, in cores on average (above ~0.1 the row is noise).\n")  # fmt: skip
    print("| size | threads | detections | upstream (img/s) | ours eager (img/s) | ONNX Runtime (img/s) | "
          "ours / upstream | ONNX / upstream | goal met? | other load (cores) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(results.rows))
    print("\nThe same detections? (warm-up, first image; found: upstream has one of the same label and box within "
          "0.01 px) " + "; ".join(results.checks))  # fmt: skip
    if results.variants:
        print("\nVariants of the deployed path, in the same passes as the table's row of their size and threads "
              "(found: of its detections, those upstream has too, as above):\n")  # fmt: skip
        print("| size | threads | deployed path | images/s | / upstream | found |")
        print("|---|---|---|---|---|---|")
        print("\n".join(results.variants))
    if results.profile:
        print_profile(*results.profile, max(args.threads))
    print(f"\nWhole run: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
