"""The deployed model: a torchvision R-CNN exported to ONNX (export.py writes it), and ONNX Runtime or OpenVINO
(RUNTIMES) running the file as the eager model runs (predict.py --onnx, train.py --test-only --onnx).

The file's contract, written down here once:
- input "image": float32 (3, H, W), RGB in [0, 1], any H and W (what predict.py gives the eager model);
- outputs, N detections each, in the eager model's order: "boxes" (N, 4) xyxy in the image's pixels, "labels" (N,)
  int64, "scores" (N,); a Mask R-CNN adds "mask_probs" (N, 1, 28, 28): the mask probabilities before pasting, which
  the caller pastes into the boxes (outside the graph, as the field does: a smaller graph, and the same pasting as
  the eager path); a Keypoint R-CNN adds "keypoints" (N, K, 3) and "keypoints_scores" (N, K);
- metadata (ONNX metadata_props, strings): FORMAT_KEY, the model's name, its classes (labels.Classes as JSON: class
  and keypoint names, the label to category id map) and its size settings: the file alone is enough to predict and
  to draw.

The graph resizes images as the eager model does to the pixel: torchvision's traced resize computes its scale in
float32, which gives 159 rows where eager Python gets 160 (an image of 200 x 90 at --max-size 160); the export
computes the size in float64 as eager does (`_resize_as_eager`). Two more changes to torchvision's traced code make
ONNX Runtime fast, not different: NMS per class as eager runs it (`_nms_per_group`), and the RoI pooler's levels
merged by one gather (`_merge_levels_by_gather`).
"""

import contextlib
import json
import warnings
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch.onnx import operators
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.ops import boxes as box_ops
from torchvision.ops import poolers

import errors
from labels import Classes
from masks import unpasted_masks
from models import iou_types_of

FORMAT_KEY = "maskrcnn_reference.export"
FORMAT_VERSION = "1"
OPSET = 17  # torchvision's detection models export from opset 11 (its test_onnx); 17 is what ONNX Runtime 1.16+ runs
INPUT = "image"
OUTPUTS_BY_IOU_TYPE = {"bbox": ["boxes", "labels", "scores"], "segm": ["mask_probs"],
                       "keypoints": ["keypoints", "keypoints_scores"]}  # fmt: skip
EAGER_OUTPUT = {"mask_probs": "raw_masks"}  # the graph's name for what unpasted_masks(model) returns
RUNTIMES = {  # --onnx-runtime: what runs the file on the CPU (benchmarks/README.md has their speeds)
    "onnxruntime": "ONNX Runtime, fp32 (the default; export.py verifies the file with it)",
    "openvino": "OpenVINO's CPU plugin, fp32 (pip install openvino)",
    "openvino-bf16": "OpenVINO's CPU plugin, bfloat16 where the cores have it (AVX-512 BF16, AMX): faster, and "
    "its AP differs from fp32's (README, Deploy)",
}
RUNTIME_HELP = "--onnx: what runs the file: " + "; ".join(f"{name}: {what}" for name, what in RUNTIMES.items())
SIZE_SETTINGS = ["min_size", "max_size", "image_mean", "image_std", "box_detections_per_img", "box_score_thresh",
                 "box_nms_thresh", "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_test"]  # fmt: skip


def check_runtime_flag(onnx: str | None, runtime: str) -> None:
    """--onnx-runtime (train.py, predict.py) names what runs an --onnx file: refused without one."""
    if onnx is None and runtime != "onnxruntime":
        raise errors.UsageError("--onnx-runtime: runs an exported file; add --onnx model.onnx")


def output_names(iou_types: list[str]) -> list[str]:
    """The graph's outputs for a model that predicts `iou_types`."""
    return [name for iou_type in iou_types for name in OUTPUTS_BY_IOU_TYPE[iou_type]]


# ----------------------------------------------------------------------------- the graph


def _resize_as_eager(transform):
    """GeneralizedRCNNTransform.resize for evaluation, traceable, giving eager's output size: the scale and the size
    in float64 (1-element tensors, which the exporter keeps in float64; a 0-dim one it writes as float32)."""

    def resize(image: torch.Tensor, target=None):
        shape = operators.shape_as_tensor(image)[-2:].to(torch.float64)
        min_size = torch.tensor([float(transform.min_size[-1])], dtype=torch.float64)
        max_size = torch.tensor([float(transform.max_size)], dtype=torch.float64)
        scale = torch.min(min_size / shape.min(), max_size / shape.max())[0]
        size = torch.floor(shape * scale).to(torch.int64)
        resized = torch.nn.functional.interpolate(image[None], size=(size[0], size[1]), mode="bilinear",
                                                  align_corners=False)  # fmt: skip
        return resized[0], target

    return resize


class ExportGraph(torch.nn.Module):
    """One image in, the outputs of OUTPUTS_BY_IOU_TYPE out, as tensors: what torch.onnx.export traces."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.outputs = output_names(iou_types_of(model))
        self.eval()  # the exporter keeps the mode it finds

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with unpasted_masks(self.model) if "mask_probs" in self.outputs else contextlib.nullcontext():
            prediction = self.model([image])[0]
        return tuple(prediction[EAGER_OUTPUT.get(name, name)] for name in self.outputs)


@contextlib.contextmanager
def _exact_resize(model: torch.nn.Module) -> Iterator[None]:
    transform = model.transform
    transform.resize = _resize_as_eager(transform)
    try:
        yield
    finally:
        del transform.resize


@contextlib.contextmanager
def _nms_per_group(model: torch.nn.Module) -> Iterator[None]:
    """While tracing, torchvision's batched_nms as one NMS per group, unrolled over the model's groups (the RPN's
    feature levels, the box head's classes), as eager runs it on many boxes (_batched_nms_vanilla).

    torchvision's tracing choice is one NMS over every group's boxes offset apart (_batched_nms_coordinate_trick),
    which ONNX Runtime's NonMaxSuppression runs in time that grows with the boxes times the boxes kept: 2.2 s of a
    5.6 s COCO-size image with 90 classes x 1000 candidates, against 0.07 s per group (benchmarks/README.md).
    torchvision's own per-group loop does not export (torch.unique's loop becomes an ONNX If the exporter cannot
    type), so the loop is unrolled over a count the model fixes: an empty group costs one NonZero."""
    original = box_ops.batched_nms
    groups: list[int] = []  # the group count of the call in progress

    def per_group(boxes, scores, idxs, iou_threshold):
        if not torchvision._is_tracing() or not groups:
            return original(boxes, scores, idxs, iou_threshold)
        keeps = []
        for group in range(groups[-1]):
            (members,) = torch.where(idxs == group)
            keeps.append(members[torchvision.ops.nms(boxes[members], scores[members], iou_threshold)])
        keep = torch.cat(keeps)
        return keep[scores[keep].sort(descending=True)[1]]

    def counting(method, count: int):
        def call(*args, **kwargs):
            groups.append(count)
            try:
                return method(*args, **kwargs)
            finally:
                groups.pop()

        return call

    rpn, heads = model.rpn, model.roi_heads
    rpn.filter_proposals = counting(rpn.filter_proposals, len(rpn.anchor_generator.sizes))
    heads.postprocess_detections = counting(heads.postprocess_detections, heads.box_predictor.cls_score.out_features)
    box_ops.batched_nms = per_group
    try:
        yield
    finally:
        box_ops.batched_nms = original
        del rpn.filter_proposals, heads.postprocess_detections


def _merge_levels_by_gather(levels: torch.Tensor, unmerged_results: list[torch.Tensor]) -> torch.Tensor:
    """MultiScaleRoIAlign's traced merge of its levels' features back into the boxes' order, as one gather.
    torchvision's (poolers._onnx_merge_levels) writes each level into a zero tensor of every box's features with
    a ScatterElements, a slow kernel in ONNX Runtime (about 0.5 s of a COCO-size image)."""
    order = torch.cat([torch.where(levels == level)[0] for level in range(len(unmerged_results))])
    return torch.cat(unmerged_results)[torch.argsort(order)]


@contextlib.contextmanager
def _graph_for_onnx_runtime(model: torch.nn.Module) -> Iterator[None]:
    """Every change the export makes to torchvision's traced code: eager's resize, NMS per group, the gather merge."""
    original_merge = poolers._onnx_merge_levels
    poolers._onnx_merge_levels = _merge_levels_by_gather
    try:
        with _exact_resize(model), _nms_per_group(model):
            yield
    finally:
        poolers._onnx_merge_levels = original_merge


def size_settings(model: torch.nn.Module) -> dict:
    """The model's size settings, as builder keyword arguments (torchvision's names)."""
    transform, rpn, heads = model.transform, model.rpn, model.roi_heads
    return {
        "min_size": int(transform.min_size[-1]), "max_size": int(transform.max_size),
        "image_mean": [float(v) for v in transform.image_mean], "image_std": [float(v) for v in transform.image_std],
        "box_detections_per_img": int(heads.detections_per_img), "box_score_thresh": float(heads.score_thresh),
        "box_nms_thresh": float(heads.nms_thresh), "rpn_pre_nms_top_n_test": int(rpn._pre_nms_top_n["testing"]),
        "rpn_post_nms_top_n_test": int(rpn._post_nms_top_n["testing"]),
    }  # fmt: skip


def export_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path, metadata: dict[str, str]) -> None:
    """Write `model` (eval mode, on the CPU) to `path` as an ONNX file of the contract above, traced on `example`
    (a (3, H, W) float image), with `metadata` in its metadata_props."""
    import onnx  # an optional extra (requirements-extras.txt)

    graph = ExportGraph(model)
    dynamic = {INPUT: {1: "height", 2: "width"}} | {name: {0: "detections"} for name in graph.outputs}
    with _graph_for_onnx_runtime(model), warnings.catch_warnings(), torch.no_grad():
        # The tracer warns about every Python int it meets in torchvision's code; torchvision wrote those paths
        # for ONNX (torchvision._is_tracing()), and the verification that follows checks the result.
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, (example,), str(path), dynamo=False, opset_version=OPSET, input_names=[INPUT],
                          output_names=graph.outputs, dynamic_axes=dynamic)  # fmt: skip
    proto = onnx.load(str(path))
    for key, value in {FORMAT_KEY: FORMAT_VERSION, **metadata}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def metadata_for(model: torch.nn.Module, model_name: str, classes: Classes, source: str) -> dict[str, str]:
    """The metadata export_onnx writes: what OnnxModel needs besides the graph."""
    return {
        "model": model_name,
        "iou_types": json.dumps(iou_types_of(model)),
        "classes": json.dumps(asdict(classes)),
        "size_settings": json.dumps(size_settings(model)),
        "source": source,
        "torch": torch.__version__,
    }


# ----------------------------------------------------------------------------- running the file


def _session_options(threads: int | None, optimization: str):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    levels = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}  # fmt: skip
    options.graph_optimization_level = levels[optimization]
    options.log_severity_level = 3  # errors only: ORT warns about every unused initializer of a traced graph
    return options


class OnnxModel:
    """An exported file on the CPU (under ONNX Runtime, or OpenVINO: RUNTIMES), called as a torchvision detection model
    in eval mode: a list of (3, H, W) float images in, a list of dicts out ("masks" (N, 1, H, W) pasted as torchvision
    pastes them; inside returning_unpasted_masks(), "raw_masks" and "image_size" as masks.unpasted_masks gives them)."""

    def __init__(self, path: str | Path, flag: str = "--onnx", threads: int | None = None, optimization: str = "all",
                 runtime: str = "onnxruntime"):  # fmt: skip
        self.path = Path(path)
        if not self.path.is_file():
            raise errors.UsageError(f"{flag}: no file {path}; pass the model.onnx that export.py wrote")
        if runtime == "onnxruntime":
            session, metadata = _open_onnxruntime(self.path, flag, threads, optimization)
        else:
            precision = "bf16" if runtime == "openvino-bf16" else "f32"
            session, metadata = _OpenVinoSession.open(self.path, flag, threads, precision)
        self.session, self.metadata = session, metadata
        self.model_name = metadata["model"]
        self.iou_types = json.loads(metadata["iou_types"])
        self.classes = Classes(**json.loads(metadata["classes"]))
        self.size_settings = json.loads(metadata["size_settings"])
        self.outputs = output_names(self.iou_types)
        self._unpasted = False

    def eval(self) -> "OnnxModel":
        return self  # engine.evaluate puts its model in eval mode; this one has no other

    @contextlib.contextmanager
    def returning_unpasted_masks(self) -> Iterator[None]:
        self._unpasted = True
        try:
            yield
        finally:
            self._unpasted = False

    def __call__(self, images: list[torch.Tensor]) -> list[dict]:
        return [self._predict(image) for image in images]

    def _predict(self, image: torch.Tensor) -> dict:
        image = image.detach().cpu().float().contiguous()
        arrays = self.session.run(self.outputs, {INPUT: image.numpy()})
        prediction = {name: torch.from_numpy(np.asarray(a)) for name, a in zip(self.outputs, arrays)}
        if "mask_probs" in prediction:
            probabilities, size = prediction.pop("mask_probs"), tuple(int(v) for v in image.shape[-2:])
            if self._unpasted:
                prediction["raw_masks"], prediction["image_size"] = probabilities, size
            else:
                prediction["masks"] = paste_masks_in_image(probabilities, prediction["boxes"], size)
        return prediction


def _not_onnx(flag: str, path: Path, runtime: str, error: Exception) -> errors.UsageError:
    return errors.UsageError(
        f"{flag}: {path} is not an ONNX model {runtime} can load ({errors.short_reason(error)}); pass the model.onnx "
        "that export.py wrote"
    )


def _check_contract(flag: str, path: Path, metadata: dict[str, str], inputs: list[str], outputs: list[str]) -> None:
    """A UsageError naming `flag` unless the file's metadata, input and outputs are those export.py writes."""
    if metadata.get(FORMAT_KEY) != FORMAT_VERSION:
        raise errors.UsageError(
            f"{flag}: {path} is an ONNX model, but not one export.py wrote (its metadata has no {FORMAT_KEY} "
            f"{FORMAT_VERSION}); export your checkpoint with export.py"
        )
    expected = output_names(json.loads(metadata["iou_types"]))
    if outputs != expected or inputs != [INPUT]:
        raise errors.UsageError(
            f"{flag}: {path} has outputs {outputs}, but its metadata says {expected}; export it again with export.py"
        )


def _open_onnxruntime(path: Path, flag: str, threads: int | None, optimization: str):
    """An ONNX Runtime session of `path` and its metadata; a UsageError naming `flag` when it is not a file
    export.py wrote."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise errors.UsageError(f"{flag}: needs onnxruntime; pip install -r requirements-extras.txt") from None
    try:
        session = ort.InferenceSession(str(path), _session_options(threads, optimization), ["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - ORT raises its own exception types for every kind of bad file
        raise _not_onnx(flag, path, "ONNX Runtime", e) from None
    metadata = session.get_modelmeta().custom_metadata_map
    inputs, outputs = [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]
    _check_contract(flag, path, metadata, inputs, outputs)
    return session, metadata


class _OpenVinoSession:
    """The file compiled by OpenVINO's CPU plugin, behind the one method of an ONNX Runtime session OnnxModel calls."""

    @classmethod
    def open(cls, path: Path, flag: str, threads: int | None, precision: str) -> tuple["_OpenVinoSession", dict]:
        try:
            import openvino
        except ImportError:
            raise errors.UsageError("--onnx-runtime: openvino is not installed; pip install openvino") from None
        core = openvino.Core()
        try:
            model = core.read_model(str(path))
        except Exception as e:  # noqa: BLE001 - OpenVINO raises RuntimeError and its own types for bad files
            raise _not_onnx(flag, path, "OpenVINO", e) from None
        framework = model.get_rt_info()["framework"] if model.has_rt_info(["framework"]) else {}  # ONNX metadata_props
        metadata = {key: value.astype(str) for key, value in framework.items()}
        inputs, outputs = [i.get_any_name() for i in model.inputs], [o.get_any_name() for o in model.outputs]
        _check_contract(flag, path, metadata, inputs, outputs)
        config = {"INFERENCE_PRECISION_HINT": precision}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        return cls(core.compile_model(model, "CPU", config)), metadata

    def __init__(self, compiled):
        self.compiled, self.request = compiled, compiled.create_infer_request()

    def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        results = self.request.infer(feeds)
        return [np.array(results[self.compiled.output(name)]) for name in names]
