"""The checkpoint format, written down once: what a checkpoint holds, and how it is saved, read and resumed.

A checkpoint file is a dict of plain data (tensors, numbers, strings, lists and dicts of them), so that
`torch.load(path, weights_only=True)` reads it and no pickled code can run. `Checkpoint` names its keys:

| key | what |
|---|---|
| `version` | FORMAT_VERSION (files without it are version 1) |
| `model` | the model's state dict |
| `optimizer`, `lr_scheduler` | their state dicts (the epoch scheduler's, as the reference's checkpoints hold it) |
| `scaler` | the GradScaler's state dict, with --amp only |
| `epoch` | the epoch the checkpoint is in (finished, unless train_state.iteration says otherwise) |
| `args` | train.py's flags as a plain dict (vars(args)) |
| `label_to_category_id`, `categories`, `keypoint_names`, `keypoint_skeleton` | the labels' meaning (Classes) |
| `train_state` | where training stands (TrainState): `seed`, `epoch`, `order`, `iteration`, `rng`, `evaluated` |
| any other key | a further stateful part of the run (`RunState.extra`), its state dict under its name |

What a run saves is built and restored here too (`RunState`: `capture` and `restore`). To add a field: a stateful
object (anything with `state_dict()` / `load_state_dict()`, such as an EMA of the weights) goes into
`RunState.extra` under its key, and is saved and restored with no other change; a field of another kind goes into
Checkpoint (or TrainState), to_dict() and from_dict(), and RunState.capture() / restore(). Bump FORMAT_VERSION if
older files must be read differently.

Saving is atomic (a temporary file beside the target, fsynced, renamed over it): `checkpoint.pth` is
always a complete checkpoint. At the end of an epoch the checkpoint is written as `model_{epoch}.pth` and
`checkpoint.pth` becomes a second name for it; `keep` bounds how many `model_{epoch}.pth` stay.
"""

import argparse
import errno
import pickle
import random
import re
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import distributed
import errors
import files
import metrics_log
from labels import Classes

FORMAT_VERSION = 1
CHECKPOINT_FILE = "checkpoint.pth"
EPOCH_FILE = re.compile(r"model_(\d+)\.pth")
# What a checkpoint needs to continue training, beyond the model.
TRAINING_KEYS = ("model", "optimizer", "lr_scheduler", "epoch")
CLASS_KEYS = ("label_to_category_id", "categories", "keypoint_names", "keypoint_skeleton")
STATE_KEYS = ("optimizer", "lr_scheduler", "scaler")
KNOWN_KEYS = {"version", "model", "epoch", "args", "train_state", *CLASS_KEYS, *STATE_KEYS}


# ----------------------------------------------------------------------------- the format


@dataclass
class TrainState:
    """Where training stands, so that a resumed run continues with the very next batch.

    `seed` is the data seed (training order and augmentation), `epoch` and `order` the epoch's training order
    (samplers.TrainSampler), `iteration` the iterations done in the checkpoint's epoch (None: the epoch is
    finished), `rng` every rank's random generators (rng_state()), in rank order. `evaluated` is False for a
    finished epoch whose evaluation was due but has not finished (it runs after the save): a resumed run evaluates
    that epoch first. Files written before the field read as evaluated."""

    seed: int
    epoch: int
    order: torch.Tensor
    iteration: int | None = None
    rng: list[dict] = field(default_factory=list)
    evaluated: bool = True

    def sampler_state(self) -> dict:
        """What samplers.TrainSampler.load_state_dict takes."""
        return {"seed": self.seed, "epoch": self.epoch, "order": self.order}


@dataclass
class Checkpoint:
    """One checkpoint file's content (see the table above). Files of other kinds read as checkpoints too (`source`
    says which): a plain state dict, as torchvision distributes its weights, has only `model`; a checkpoint of
    torchvision's reference train.py has no classes and no train_state, and its `args` become a plain dict."""

    model: dict[str, torch.Tensor]
    epoch: int | None = None
    args: dict[str, Any] = field(default_factory=dict)
    classes: Classes | None = None
    optimizer: dict | None = None
    lr_scheduler: dict | None = None
    scaler: dict | None = None
    train_state: TrainState | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # further parts' states, by key (RunState.extra)
    version: int = FORMAT_VERSION
    source: str = field(default="train.py", compare=False)  # or "state dict", "torchvision reference"; not saved

    def to_dict(self) -> dict:
        data = {"version": self.version, "model": self.model, "epoch": self.epoch, "args": dict(self.args)}
        if self.classes is not None:
            data |= {key: getattr(self.classes, key) for key in CLASS_KEYS}
        for key in STATE_KEYS:
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        if self.train_state is not None:
            data["train_state"] = vars(self.train_state).copy()
        return data | self.extra

    @classmethod
    def from_dict(cls, data: dict) -> "Checkpoint":
        """A checkpoint from what torch.load read: one of ours (any version), or a plain state dict."""
        if "model" not in data:
            return cls(model=data, version=0, source="state dict")
        state, args = data.get("train_state"), data.get("args") or {}
        reference = isinstance(args, argparse.Namespace)  # the reference pickles its flags
        return cls(
            model=data["model"],
            epoch=data.get("epoch"),
            args=dict(vars(args) if reference else args),
            classes=Classes(**{key: data[key] for key in CLASS_KEYS if key in data}) if CLASS_KEYS[0] in data else None,
            optimizer=data.get("optimizer"),
            lr_scheduler=data.get("lr_scheduler"),
            scaler=data.get("scaler"),
            train_state=None if state is None else TrainState(**state),
            extra={key: value for key, value in data.items() if key not in KNOWN_KEYS},
            version=0 if reference else int(data.get("version", 1)),
            source="torchvision reference" if reference else "train.py",
        )

    @property
    def can_resume_training(self) -> bool:
        return self.optimizer is not None and self.lr_scheduler is not None and self.epoch is not None

    @property
    def epoch_finished(self) -> bool:
        return self.train_state is None or self.train_state.iteration is None

    @property
    def evaluation_due(self) -> bool:
        """Whether the checkpoint was saved at the end of an epoch whose evaluation was due to run after the save."""
        return self.train_state is not None and not self.train_state.evaluated and self.epoch_finished

    def unevaluated_epoch(self, path: str | Path) -> int | None:
        """The finished epoch whose due evaluation never finished (the run stopped during it), if any. A finished
        evaluation is marked by its record in metrics.jsonl beside the checkpoint, written after the checkpoint:
        the checkpoint is written once per epoch, not again after its evaluation."""
        if not self.evaluation_due:
            return None
        path = Path(path)
        saved_at = path.stat().st_mtime if path.is_file() else float("inf")
        done = metrics_log.evaluated_epochs(path.parent / metrics_log.METRICS_FILE, since=saved_at)
        return None if self.epoch in done else self.epoch


# ----------------------------------------------------------------------------- reading


def load_file(path: str | Path, what: str, flag: str) -> Any:
    """torch.load with weights_only=True, allowing argparse.Namespace (the reference's checkpoints hold one, and it is
    plain data) and nothing else; any failure becomes a UsageError naming the file and flag."""
    path = Path(path)
    if path.is_dir():
        raise errors.UsageError(f"{flag}: {path} is a folder; pass a {what} file in it, e.g. {path / CHECKPOINT_FILE}")
    if not path.is_file():
        hint = " (a file path: nothing is downloaded)" if "Weights." in str(path) else ""
        raise errors.UsageError(f"{flag}: {what} file {path} does not exist{hint}; check the path")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
            # a pickle.dump file: torch warns of its protocol before refusing it, which the one line below says
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a torn or foreign file: the same advice whatever the library raised
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if isinstance(e, pickle.UnpicklingError) and (found or _is_raw_pickle(path)):
            # Pickled objects other than plain data could run code: never unpickled.
            named = f" (such as {found.group(1)})" if found else ""
            raise errors.UsageError(
                f"{flag}: {path} holds pickled Python objects{named}, which could run code when loaded, so it was "
                f'refused and nothing in it ran; if you trust it, keep only its tensors: python -c "import torch; '
                f"c = torch.load('{path}', weights_only=False); torch.save({{'model': c['model']}}, 'weights.pth')\" "
                "and pass weights.pth"
            ) from None
        raise errors.UsageError(
            f"{flag}: {path} is not a file written by torch.save ({type(e).__name__}: {errors.short_reason(e)}); "
            f"pass a {what}"
        ) from None


def _is_raw_pickle(path: Path) -> bool:
    """A pickle written by pickle.dump rather than torch.save (its first byte is protocol 2+'s PROTO opcode)."""
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"


def read_model_file(path: str | Path, flag: str, training_checkpoint: bool = False) -> Checkpoint:
    """Read --weights, --resume or predict.py's --checkpoint up front, so that a wrong file stops the run before
    any slow work: a checkpoint, or a whole-model state dict (`training_checkpoint`: one that can resume training)."""
    loaded = load_file(path, "model checkpoint", flag)
    if not isinstance(loaded, dict):
        raise errors.UsageError(f"{flag}: {path} holds a {type(loaded).__name__}, not a state dict or checkpoint")
    missing = [k for k in TRAINING_KEYS if k not in loaded]
    if training_checkpoint and missing:
        raise errors.UsageError(
            f"{flag}: {path} has no {', '.join(missing)}; it is not a training checkpoint (use --weights)"
        )
    return Checkpoint.from_dict(loaded)


# ----------------------------------------------------------------------------- saving


def _write_torch_file(obj: Any, tmp: Path) -> None:
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        files.fsync_file(f)


def save_on_master(obj: Any, path: str | Path) -> None:
    """Save from rank 0 only, atomically: a crash mid-write never leaves a torn file at `path`."""
    if distributed.is_main_process():
        files.replace_atomically(Path(path), lambda tmp: _write_torch_file(obj, tmp))


SPACE_MARGIN = 1.05  # torch.save's headers and alignment beyond the tensors' bytes, with room to spare


def tensor_bytes(obj: Any) -> int:
    """The bytes of every tensor in a nest of dicts, lists and tuples: what a checkpoint of it takes on disk."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def _gib(size: float) -> str:
    return f"{size / 2**30:.2f} GiB"


def check_free_space(folder: Path, needed: int, what: str = "a checkpoint") -> None:
    """A UsageError naming `folder`, the bytes needed and free, when `needed` bytes do not fit there."""
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise errors.UsageError(
            f"--output-dir: {folder} has {free} bytes ({_gib(free)}) free and {what} needs about {needed} bytes "
            f"({_gib(needed)}); free space there (older model_*.pth, or --keep-checkpoints) or choose another folder"
        )


def estimated_checkpoint_bytes(model: torch.nn.Module, optimizer_name: str) -> int:
    """A checkpoint's size before the first one is written: the model, and the optimizer's state per parameter
    (SGD's momentum: one copy, AdamW's two moments: two), with the margin."""
    copies = 1 + {"adamw": 2}.get(optimizer_name, 1)
    parameters = sum(tensor_bytes(p) for p in model.parameters() if p.requires_grad)
    return int((tensor_bytes(model.state_dict()) + (copies - 1) * parameters) * SPACE_MARGIN)


def check_room_for_the_run(folder: Path, checkpoint_bytes: int, kept: int) -> None:
    """At start-up: one checkpoint must fit (else a UsageError); warn when the `kept` that the run keeps do not."""
    check_free_space(folder, checkpoint_bytes)
    free = shutil.disk_usage(folder).free
    if kept * checkpoint_bytes > free:
        errors.warn(
            f"--output-dir: {folder} has {_gib(free)} free, room for {free // checkpoint_bytes} checkpoints of about "
            f"{_gib(checkpoint_bytes)}, and this run keeps {kept} (--keep-checkpoints); it will stop with a message "
            "when the disk is full: lower --keep-checkpoints or free space"
        )


def save_checkpoint(data: dict, output_dir: str | Path, epoch: int | None = None, keep: int | None = None) -> Path:
    """Write a checkpoint dict (Checkpoint.to_dict()) to <output_dir>/checkpoint.pth, atomically, from rank 0.

    With an `epoch` (the end of one), it is written as model_{epoch}.pth first and checkpoint.pth
    becomes a second name for it; then only the newest `keep` model_*.pth files are kept.
    Mid-epoch checkpoints (no epoch) replace checkpoint.pth alone. Returns checkpoint.pth's path.
    """
    output_dir = Path(output_dir)
    latest = output_dir / CHECKPOINT_FILE
    if not distributed.is_main_process():
        return latest
    needed = int(tensor_bytes(data) * SPACE_MARGIN)
    check_free_space(output_dir, needed)
    try:
        if epoch is None:
            save_on_master(data, latest)
            return latest
        epoch_file = output_dir / f"model_{epoch}.pth"
        save_on_master(data, epoch_file)
        files.replace_atomically(latest, lambda tmp: files.link_or_copy(epoch_file, tmp))
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # the temporary file is gone and the previous checkpoint whole (files.replace_atomically)
        free = shutil.disk_usage(output_dir).free
        raise errors.UsageError(
            f"--output-dir: {output_dir} ran out of space writing a checkpoint of about {needed} bytes "
            f"({_gib(needed)}; {free} bytes free now); the previous checkpoint.pth is whole: free space, then resume "
            "with --auto-resume"
        ) from None
    if keep is not None:
        _remove_old_epoch_files(output_dir, keep)
    return latest


# files.replace_atomically's temporary files (".<name>.tmp") of the files a run saves
STALE_TEMPORARY = re.compile(r"\.(checkpoint\.pth|model_\d+\.pth|predictions(_\d+)?\.json)\.tmp")


def remove_stale_temporary_files(output_dir: Path) -> None:
    """At start-up (rank 0): a save cut off by kill -9 or a crash leaves its temporary file (a checkpoint's size);
    no save is under way yet, so it can go, said once each."""
    for path in sorted(output_dir.iterdir()):
        if STALE_TEMPORARY.fullmatch(path.name) and path.is_file():
            size = path.stat().st_size
            path.unlink(missing_ok=True)
            print(f"Removed {path} ({size / 2**20:.0f} MiB), left by a save that an earlier run's end cut off")


def _remove_old_epoch_files(output_dir: Path, keep: int) -> None:
    epochs = sorted(int(m.group(1)) for p in output_dir.iterdir() if (m := EPOCH_FILE.fullmatch(p.name)))
    for old in epochs[: max(len(epochs) - keep, 0)]:
        (output_dir / f"model_{old}.pth").unlink(missing_ok=True)


# ----------------------------------------------------------------------------- random state


def rng_state() -> dict:
    """This process's random generators (python, numpy, torch CPU and CUDA) as plain data."""
    version, mt_state, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(mt_state), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
    }


def set_rng_state(state: dict) -> None:
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(mt_state), gauss))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def restore_random_state(checkpoint: Checkpoint | None) -> None:
    """Continue each rank's random stream where the checkpoint left it (last, just before training)."""
    states = checkpoint.train_state.rng if checkpoint is not None and checkpoint.train_state is not None else None
    if not states:
        return
    if len(states) != distributed.get_world_size():
        print(
            f"Warning: the checkpoint holds random states for {len(states)} processes, "
            f"this run has {distributed.get_world_size()}"
        )
        return
    set_rng_state(states[distributed.get_rank()])


# ----------------------------------------------------------------------------- resuming


def restore_training_state(
    checkpoint: Checkpoint, path: str, optimizer, lr_scheduler, scaler, train_sampler
) -> tuple[int, int]:
    """Load the optimizer, scheduler and scaler states and the position in the training order (the model is
    loaded by models.load_model_weights). Returns the epoch to start at and the iterations already done in it."""
    saved_groups = checkpoint.optimizer.get("param_groups", [])
    # The same optimizer (AdamW's groups have betas, SGD's momentum) over the same parameters; other keys may come
    # and go with the torch version that saved them.
    fits = len(saved_groups) == len(optimizer.param_groups) and all(
        ("betas" in saved) == ("betas" in current) and len(saved["params"]) == len(current["params"])
        for saved, current in zip(saved_groups, optimizer.param_groups)
    )
    if not fits:
        saved = checkpoint.args
        raise errors.UsageError(
            f"--resume: the optimizer state in {path} does not fit this run (it was saved with --opt "
            f"{saved.get('opt', '?')}, --model {saved.get('model', '?')}, --norm-weight-decay "
            f"{saved.get('norm_weight_decay')}); resume with that run's flags"
        )
    optimizer.load_state_dict(checkpoint.optimizer)
    lr_scheduler.load_state_dict(checkpoint.lr_scheduler)
    if scaler is not None and checkpoint.scaler is not None:
        scaler.load_state_dict(checkpoint.scaler)
    state = checkpoint.train_state
    start_epoch = checkpoint.epoch + (1 if checkpoint.epoch_finished else 0)
    if state is not None and not train_sampler.load_state_dict(state.sampler_state()):
        print(f"Warning: {path} was saved with a training set of {len(state.order)} images; this one differs")
    return start_epoch, 0 if checkpoint.epoch_finished else state.iteration


# ----------------------------------------------------------------------------- a run's state


@dataclass
class RunState:
    """The stateful parts of a training run that its checkpoints hold: built into a Checkpoint (`capture`) and
    restored from one (`restore`) here, beside the format. `args` are the run's flags as recorded (train.py's,
    with the run's real number of processes as `world_size`); `extra` holds further parts by checkpoint key."""

    args: dict[str, Any]
    classes: Classes
    model: torch.nn.Module  # without its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any  # solver.WarmupLRScheduler
    train_sampler: Any  # samplers.TrainSampler
    scaler: torch.amp.GradScaler | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # key -> an object with state_dict() / load_state_dict()

    def capture(self, epoch: int, iteration: int | None, evaluated: bool, rng: list[dict]) -> Checkpoint:
        """The checkpoint of the run `iteration` iterations into `epoch` (None: at its end); `rng` every rank's
        random state (rng_state(), gathered)."""
        return Checkpoint(
            model=self.model.state_dict(), epoch=epoch, args=dict(self.args), classes=self.classes,
            optimizer=self.optimizer.state_dict(), lr_scheduler=self.lr_scheduler.state_dict(),
            scaler=None if self.scaler is None else self.scaler.state_dict(),
            train_state=TrainState(
                **self.train_sampler.state_dict(), iteration=iteration, rng=rng, evaluated=evaluated
            ),
            extra={key: part.state_dict() for key, part in self.extra.items()},
        )  # fmt: skip

    def restore(self, checkpoint: Checkpoint, path: str) -> tuple[int, int]:
        """Load everything but the model (models.load_whole_model reads that) from `checkpoint`; returns the epoch to
        start at and the iterations already done in it."""
        start = restore_training_state(
            checkpoint, path, self.optimizer, self.lr_scheduler, self.scaler, self.train_sampler
        )
        for key, part in self.extra.items():
            if key not in checkpoint.extra:
                raise errors.UsageError(f"--resume: {path} holds no {key!r}; it was saved by a run without it")
            part.load_state_dict(checkpoint.extra[key])
        return start


def save_run(
    state: RunState, output_dir: str | Path, epoch: int, iteration: int | None = None, evaluated: bool = True,
    keep: int | None = None,
) -> Path:  # fmt: skip
    """Save the run; call it on every rank (it gathers each rank's random state), rank 0 writes. `iteration` is None
    at the end of an epoch, else the iterations done in `epoch` so far; `evaluated` False for a finished epoch whose
    due evaluation is still to run."""
    rng = distributed.all_gather(rng_state())
    checkpoint = state.capture(epoch, iteration, evaluated, rng)
    finished = epoch if iteration is None else None
    return save_checkpoint(checkpoint.to_dict(), output_dir, epoch=finished, keep=keep)
