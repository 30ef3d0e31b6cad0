"""The environment section: torch, CUDA, cuDNN, NCCL, the GPU and its memory."""

import os
import platform
from typing import Any

import torch
import torchvision

from device_check.frame import SKIPPED_NO_CUDA, Context, Section, failure


def section_environment(ctx: Context) -> Section:
    section = Section("environment", "item | value")
    items: list[tuple[str, Any]] = [
        ("python", platform.python_version()),
        ("torch", torch.__version__),
        ("torchvision", torchvision.__version__),
        ("CUDA (torch built with)", torch.version.cuda or "none"),
        ("cuDNN", torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else "none"),
    ]
    if ctx.cuda:
        props = torch.cuda.get_device_properties(ctx.device)
        items += [
            ("GPU", torch.cuda.get_device_name(ctx.device)),
            ("GPU memory (GiB)", round(props.total_memory / 2**30, 1)),
            ("compute capability", f"{props.major}.{props.minor}"),
            ("GPUs visible", torch.cuda.device_count()),
        ]
        try:
            version = torch.cuda.nccl.version()  # a tuple; an int in older torch
            items.append(("NCCL", ".".join(map(str, version)) if isinstance(version, tuple) else str(version)))
        except Exception as e:  # noqa: BLE001 - a build without NCCL says so in the table
            items.append(("NCCL", failure(e)))
    else:
        items.append(("GPU", SKIPPED_NO_CUDA))
    items += [
        ("CPU cores", os.cpu_count()),
        ("torch threads", torch.get_num_threads()),
        ("inputs", ctx.results.get("inputs", "not written")),
    ]
    for name, value in items:
        section.add([name, value], item=name, value=value)
    return section
