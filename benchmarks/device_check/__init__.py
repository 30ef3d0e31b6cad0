"""The device check's parts (benchmarks/gpu_check.py is its entry point: the flags, the plan, the order of the
sections). The frame (frame.py: the plan, the shared context, a section's table, the report), the inputs it writes
(inputs.py), the model and training loops several sections time (trainer.py), and one module per section:

- environment.py: torch, CUDA, cuDNN, NCCL, the GPU and its memory.
- throughput.py: maskrcnn_resnet50_fpn, batch 2 and 8, fp32 and --amp; images/s and peak memory of
  engine.train_one_epoch beside a bare forward/backward/step loop over the same in-memory batches, warm-up excluded.
- syncs.py: host-device syncs per training iteration, ours against the bare loop (torch.cuda.set_sync_debug_mode,
  and the profiler's cuda*Synchronize calls and device-to-host copies).
- loader.py: our loader alone (decode, targets, flip, batches; -j 4 and -j 8) against the training images/s.
- evaluation.py: model and post-processing (mask pasting and RLE encoding on the device) time per image, and the
  12+12 AP of one checkpoint on the same images evaluated on CUDA and on the CPU.
- torchrun.py: train.py under `torchrun --nproc_per_node=1` (NCCL), SIGTERM mid-epoch, --auto-resume, and the resumed
  run compared with an uninterrupted one (CUDA random states restored).
- amp.py: 100 iterations under fp16 autocast and GradScaler: the loss stays finite, few steps are skipped.

Child processes (train.py under torchrun) are run with the project's processes.py, which the tests use too.
Importing the package puts the repository root on sys.path, for the project's modules.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
