"""The device check: what a first lease of a GPU should measure, prepared and dry-run on the CPU so that the lease's
minutes go to measuring, not debugging (issue #14). The entry point: the flags, the plan of sizes and the order of
the sections; the sections and their frame are the package device_check/ beside this script (its docstring lists
what each measures).

    python benchmarks/gpu_check.py --out output/gpu_check            # on one GPU: at most 8 minutes
    python benchmarks/gpu_check.py --dry-run --out /tmp/gpu_check    # the same code on the CPU, tiny sizes (CI)
    python benchmarks/gpu_check.py --out DIR --sections evaluation,fp16-amp   # a rerun of some sections

It writes its own inputs, then runs each section on its own: a section that fails, or finds too little of the time
budget left, records that in its table and the others still run. `gpu_check.md` (markdown tables, ours beside the
baseline as a ratio) and `gpu_check.json` (the same numbers, unrounded) are rewritten after every section.

With --dry-run everything runs on the CPU at 96-128 px for a few iterations (gloo instead of NCCL), on the tests'
small Mask R-CNN (tests/tiny_models.py: a 2.5 MB model, not ResNet-50's 170 MB, whose checkpoints made the dry run
write 1.2 GB); what needs CUDA is reported as "skipped (no CUDA)". Scripts import modules, never each other: train.py
runs as a subprocess.
"""

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import bench_output  # benchmarks/bench_output.py, beside this script
import torch
from device_check import amp, environment, evaluation, frame, loader, syncs, throughput, torchrun
from device_check.frame import DRY_RUN_MODEL, MODEL, TINY_MODEL_KWARGS, Context, Plan, SectionSpec, commit, slug
from device_check.inputs import prepare_inputs

GPU_PLAN = Plan(
    model=MODEL, train_script=("train.py",), backbone_file=True, train_env={},
    image_size=(640, 480), min_size=None, max_size=None, model_kwargs=[], num_classes=91, train_images=40,
    val_images=16, loader_distinct=32, loader_repeat=64, batch_sizes=(2, 8), warmup=3, max_iterations=20, repeats=2,
    config_seconds=28, workers=(4, 8), loader_seconds=10, sync_iterations=3, amp_iterations=100, run_timeout=150,
    budget=420,
)  # fmt: skip
DRY_PLAN = Plan(
    model=DRY_RUN_MODEL, train_script=("tests/tiny_models.py", "train.py"), backbone_file=False,
    train_env={"TINY_MODEL_STEP_SECONDS": "0.3"},
    image_size=(128, 96), min_size=96, max_size=128, model_kwargs=TINY_MODEL_KWARGS, num_classes=4, train_images=8,
    val_images=4, loader_distinct=8, loader_repeat=6, batch_sizes=(2,), warmup=1, max_iterations=2, repeats=1,
    config_seconds=20, workers=(0, 2), loader_seconds=5, sync_iterations=1, amp_iterations=2, run_timeout=180,
    budget=600,
)  # fmt: skip
# (name, function, seconds it needs at least on a GPU, in a dry run), run in this order (the most wanted first, and
# evaluation after the torchrun section, whose checkpoint it evaluates); shown in DISPLAY_ORDER.
SECTIONS: list[SectionSpec] = [
    ("environment", environment.section_environment, 0, 0),
    ("training throughput", throughput.section_training_throughput, 40, 5),
    ("torchrun exact resume", torchrun.section_torchrun, 60, 20),
    ("evaluation", evaluation.section_evaluation, 20, 5),
    ("fp16 AMP", amp.section_amp, 15, 3),
    ("host-device syncs", syncs.section_syncs, 10, 0),
    ("data loader", loader.section_data_loader, 10, 3),
]
DISPLAY_ORDER = ["environment", "training throughput", "host-device syncs", "data loader", "evaluation",
                 "torchrun exact resume", "fp16 AMP"]  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    add = parser.add_argument
    add("--out", required=True, help="folder for gpu_check.md and gpu_check.json")
    add("--dry-run", action="store_true", help="on the CPU at tiny sizes (what CI runs)")
    add("--device", default=None, help="default: cuda (cpu with --dry-run)")
    add("--budget", type=float, default=None, help="seconds for all sections (default 420; 600 with --dry-run)")
    add("--sections", default=None, help="run only these, comma-separated: " + ",".join(slug(s[0]) for s in SECTIONS))
    add("--threads", type=int, default=None, help="torch threads here and in train.py (default: 1 with --dry-run, "
        "where a core taken by another process stalls every 2-thread operation; else torch's default)")  # fmt: skip
    add("--work", default=None, help="folder for the inputs and train.py's runs (default: a temporary one, removed)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    started = time.monotonic()
    plan = DRY_PLAN if args.dry_run else GPU_PLAN
    device = torch.device(args.device or ("cpu" if args.dry_run else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda: no CUDA device here; --dry-run checks the script on the CPU", file=sys.stderr)
        return 2
    chosen = None if args.sections is None else {slug(s) for s in args.sections.split(",")}
    unknown = sorted((chosen or set()) - {slug(s[0]) for s in SECTIONS})
    if unknown:
        print(f"error: --sections: no section {', '.join(unknown)}", file=sys.stderr)
        return 2
    budget = args.budget if args.budget is not None else plan.budget
    if args.dry_run:
        frame.register_dry_run_model()
    threads = args.threads if args.threads is not None else (1 if args.dry_run else None)
    if threads is not None:
        torch.set_num_threads(threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        work = Path(args.work) if args.work else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        work.mkdir(parents=True, exist_ok=True)
        ctx = Context(plan, device, args.dry_run, work, deadline=started + budget, threads=threads)
        mode = "dry run on the CPU (tiny sizes)" if args.dry_run else f"full, on {device}"
        header = {"machine": bench_output.machine(device), "commit": commit(), "budget": budget, "seconds": 0.0,
                  "mode": mode, "dry_run": args.dry_run}  # fmt: skip
        prepare_inputs(ctx)
        sections = frame.run_sections(ctx, SECTIONS, chosen, out, header, DISPLAY_ORDER)
    print()
    print(frame.markdown(header, sections, DISPLAY_ORDER))
    print(f"\nWrote {out / 'gpu_check.md'} and {out / 'gpu_check.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
