"""solver.py: optimizers and parameter groups as the reference builds them, and the lr schedule: the reference's
warm-up (computed from the iteration alone) followed by the epoch scheduler."""

import pytest
import torch
import torchvision

import solver
import train
from solver import LinearWarmup


def _args(*extra: str):
    return train.get_args_parser().parse_args(list(extra))


def test_norm_weight_decay_puts_norm_layers_in_their_own_group():
    model = torchvision.models.get_model("maskrcnn_resnet50_fpn", weights=None, weights_backbone=None, num_classes=3)
    optimizer = solver.build_optimizer(model, _args("--norm-weight-decay", "0", "--opt", "sgd_nesterov"))
    other, norm = optimizer.param_groups
    assert norm["weight_decay"] == 0 and other["weight_decay"] == 1e-4 and other["nesterov"]
    bn_params = {id(p) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters()}
    assert {id(p) for p in norm["params"]} == bn_params
    assert len(other["params"]) + len(norm["params"]) == len(list(model.parameters()))


def test_warmup_matches_the_reference_linear_lr_and_needs_only_the_iteration():
    param = torch.nn.Parameter(torch.zeros(1))
    reference_optimizer = torch.optim.SGD([param], lr=0.02)
    reference = torch.optim.lr_scheduler.LinearLR(reference_optimizer, start_factor=1 / 1000, total_iters=10)
    optimizer = torch.optim.SGD([param], lr=0.02)
    warmup = LinearWarmup(optimizer, iters_per_epoch=11)
    assert warmup.iters == 10
    for iteration in range(11):
        warmup.set_lr(iteration)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(reference_optimizer.param_groups[0]["lr"], rel=1e-9)
        reference_optimizer.step()
        reference.step()
    assert optimizer.param_groups[0]["lr"] == 0.02  # exactly the base lr once warm-up is over
    # A resumed run's optimizer holds a warmed-up lr; the warm-up starts from the scheduler's initial_lr.
    optimizer.param_groups[0].update(lr=0.001, initial_lr=0.02)
    resumed = LinearWarmup(optimizer, iters_per_epoch=11)
    resumed.set_lr(5)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.02 * (1 / 1000 * 0.5 + 0.5))
    assert LinearWarmup(optimizer, iters_per_epoch=5000).iters == 1000
    assert LinearWarmup(optimizer, iters_per_epoch=1).factor(0) == 1.0


def test_a_resumed_schedule_steps_without_torchs_call_order_warning(recwarn):
    """Stopped after an epoch's last iteration, a run resumes by stepping its scheduler before any optimizer step in
    the new process: torch would warn of the old call order, which did not happen."""
    param = torch.nn.Parameter(torch.zeros(1))
    args = _args("--lr-steps", "1")
    saved = solver.build_lr_scheduler(torch.optim.SGD([param], lr=0.1), args, iters_per_epoch=4).state_dict()
    fresh = solver.build_lr_scheduler(torch.optim.SGD([param], lr=0.1), args, iters_per_epoch=4)
    fresh.step()
    assert any("before `optimizer.step()`" in str(w.message) for w in recwarn)  # what torch says without a checkpoint
    recwarn.clear()
    optimizer = torch.optim.SGD([param], lr=0.1)
    resumed = solver.build_lr_scheduler(optimizer, args, iters_per_epoch=4)
    resumed.load_state_dict(saved)
    resumed.step()
    assert not [w for w in recwarn if "lr_scheduler" in str(w.message)]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01)  # and the schedule went on
