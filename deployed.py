"""The deployed model: a torchvision R-CNN exported to ONNX (export.py writes it), and ONNX Runtime running the file as
the eager model runs (predict.py --onnx, train.py --test-only --onnx).

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
computes the size in float64 as eager does (`_resize_as_eager`).
"""

import contextlib
import json
import warnings
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch.onnx import operators
from torchvision.models.detection.roi_heads import paste_masks_in_image

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
SIZE_SETTINGS = ["min_size", "max_size", "image_mean", "image_std", "box_detections_per_img", "box_score_thresh",
                 "box_nms_thresh", "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_test"]  # fmt: skip


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
    with _exact_resize(model), warnings.catch_warnings(), torch.no_grad():
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
    """An exported file under ONNX Runtime on the CPU, called as a torchvision detection model in eval mode: a list of
    (3, H, W) float images in, a list of dicts out ("masks" (N, 1, H, W) pasted as torchvision pastes them; inside
    returning_unpasted_masks(), "raw_masks" and "image_size" as masks.unpasted_masks gives them)."""

    def __init__(self, path: str | Path, flag: str = "--onnx", threads: int | None = None, optimization: str = "all"):
        self.path = Path(path)
        session, metadata = _open(self.path, flag, threads, optimization)
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


def _open(path: Path, flag: str, threads: int | None, optimization: str):
    """An ONNX Runtime session of `path` and its metadata; a UsageError naming `flag` when it is not a file
    export.py wrote."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise errors.UsageError(f"{flag}: needs onnxruntime; pip install -r requirements-extras.txt") from None
    if not path.is_file():
        raise errors.UsageError(f"{flag}: no file {path}; pass the model.onnx that export.py wrote")
    try:
        session = ort.InferenceSession(str(path), _session_options(threads, optimization), ["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - ORT raises its own exception types for every kind of bad file
        raise errors.UsageError(
            f"{flag}: {path} is not an ONNX model ONNX Runtime can load ({errors.short_reason(e)}); pass the "
            "model.onnx that export.py wrote"
        ) from None
    metadata = session.get_modelmeta().custom_metadata_map
    if metadata.get(FORMAT_KEY) != FORMAT_VERSION:
        raise errors.UsageError(
            f"{flag}: {path} is an ONNX model, but not one export.py wrote (its metadata has no {FORMAT_KEY} "
            f"{FORMAT_VERSION}); export your checkpoint with export.py"
        )
    expected = output_names(json.loads(metadata["iou_types"]))
    actual = [o.name for o in session.get_outputs()]
    if actual != expected or [i.name for i in session.get_inputs()] != [INPUT]:
        raise errors.UsageError(
            f"{flag}: {path} has outputs {actual}, but its metadata says {expected}; export it again with export.py"
        )
    return session, metadata
