"""utils.py: collate_fn and the console meters (SmoothedValue, MetricLogger)."""

import statistics

import pytest
import torch

import utils


def test_collate_fn_keeps_images_and_targets_as_tuples():
    images = [torch.zeros(3, 4, 5), torch.ones(3, 6, 2)]
    targets = [{"image_id": 1}, {"image_id": 2}]
    batched_images, batched_targets = utils.collate_fn(list(zip(images, targets)))
    assert isinstance(batched_images, tuple) and isinstance(batched_targets, tuple)
    assert batched_images[0] is images[0] and batched_images[1] is images[1]
    assert batched_targets == (targets[0], targets[1])


def test_collate_fn_in_a_dataloader():
    data = [(torch.full((1, i + 1, 2), float(i)), {"n": i}) for i in range(5)]
    loader = torch.utils.data.DataLoader(data, batch_size=2, collate_fn=utils.collate_fn)
    batches = list(loader)
    assert len(batches) == 3
    assert [t["n"] for t in batches[2][1]] == [4]
    assert [img.shape[1] for img in batches[0][0]] == [1, 2]


def test_smoothed_value_statistics():
    meter = utils.SmoothedValue(window_size=3)
    assert (meter.median, meter.avg, meter.global_avg, meter.max, meter.value) == (0.0, 0.0, 0.0, 0.0, 0.0)
    for v in [10.0, 1.0, 4.0, 7.0]:
        meter.update(v)
    # the window holds the last three values: 1, 4, 7
    assert meter.median == 4.0
    assert meter.avg == pytest.approx(4.0)
    assert meter.max == 7.0
    assert meter.value == 7.0
    assert meter.global_avg == pytest.approx(22.0 / 4)
    assert meter.count == 4


def test_smoothed_value_weighted_updates():
    meter = utils.SmoothedValue(window_size=10)
    meter.update(2.0, n=3)
    meter.update(6.0, n=1)
    assert meter.global_avg == pytest.approx((2.0 * 3 + 6.0) / 4)
    assert meter.avg == pytest.approx(4.0)  # the window averages values, not weights


def test_smoothed_value_median_of_an_even_window_is_a_middle_value():
    meter = utils.SmoothedValue(window_size=4)
    for v in [3.0, 1.0, 9.0, 5.0]:
        meter.update(v)
    assert meter.median in (3.0, 5.0)
    assert statistics.median_low([3.0, 1.0, 9.0, 5.0]) == meter.median  # torch's median is the lower middle value


def test_smoothed_value_str():
    meter = utils.SmoothedValue(window_size=5, fmt="{value:.1f} {max:.1f} {avg:.2f}")
    meter.update(1.0)
    meter.update(2.0)
    assert str(meter) == "2.0 2.0 1.50"
    assert str(utils.SmoothedValue()) == "0.0000 (0.0000)"


def test_smoothed_value_synchronize_is_a_no_op_without_distributed():
    meter = utils.SmoothedValue()
    meter.update(3.0, n=2)
    meter.synchronize_between_processes()
    assert (meter.count, meter.total) == (2, 6.0)


def test_metric_logger(capsys):
    logger = utils.MetricLogger(delimiter=" | ")
    logger.update(loss=torch.tensor(2.0), lr=0.1)
    logger.update(loss=4.0)
    assert logger.loss.global_avg == pytest.approx(3.0)
    assert logger.lr.value == pytest.approx(0.1)
    with pytest.raises(AttributeError, match="nope"):
        logger.nope  # noqa: B018
    logger.add_meter("custom", utils.SmoothedValue(fmt="{value:.0f}"))
    logger.update(custom=7)
    text = str(logger)
    assert text.startswith("loss: ")
    assert " | custom: 7" in text
    items = list(logger.log_every(list("abcde"), print_freq=2, header="Test:"))
    assert items == list("abcde")
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(" | ")[1] for line in lines[:-1]] == ["[0/5]", "[2/5]", "[4/5]"]
    assert lines[-1].startswith("Test: Total time:")


def test_log_every_hands_each_printed_lines_numbers_to_on_print(capsys):
    logger = utils.MetricLogger()
    seen = []
    for i, _ in enumerate(
        logger.log_every(range(5), print_freq=2, start=0, on_print=lambda i, numbers: seen.append((i, numbers)))
    ):
        logger.update(loss=float(i), lr=0.5 / (i + 1))
    assert [i for i, _ in seen] == [0, 2, 4]  # the iterations of the printed lines
    for i, numbers in seen:
        assert numbers["loss"] == float(i) and numbers["lr"] == 0.5 / (i + 1)  # this iteration's values, not smoothed
        assert numbers["iter_time"] >= numbers["data_time"] >= 0
        assert ("max_mem_mb" in numbers) == torch.cuda.is_available()
    assert len(capsys.readouterr().out.strip().splitlines()) == 4  # the console lines are unchanged
