"""flags.py: which flags a command typed, and what a resumed run takes from its checkpoint's recorded flags (taken
when not typed; a typed change of what the run computes refused, unless it is free or --allow-changed-flags)."""

import pytest

import errors
import flags

PARSER = flags.get_args_parser()


def _parsed(*argv: str):
    return PARSER.parse_args(list(argv)), flags.typed_flags(PARSER, list(argv))


def _recorded(**changes) -> dict:
    """A checkpoint's flags: the defaults with `changes`, as a checkpoint gives them back (lists, not tuples)."""
    return vars(PARSER.parse_args([])) | {"world_size": 1} | changes


def test_typed_flags_are_the_ones_on_the_command_line_even_at_their_default():
    default_lr = PARSER.get_default("lr")
    _, typed = _parsed("--lr", str(default_lr), "--epochs", "3", "--model-kwargs", "box_batch_size_per_image=32")
    assert typed == {"lr", "epochs", "model_kwargs"}


def test_an_untyped_flag_is_taken_from_the_checkpoint_into_a_new_namespace():
    args, typed = _parsed("--resume", "c.pth")
    recorded = _recorded(lr=0.5, min_size=96, model_kwargs=[["box_batch_size_per_image", 32]], epochs=7)
    restored, taken = flags.restore_recorded(args, recorded, typed, "c.pth")
    assert (restored.lr, restored.min_size, restored.epochs) == (0.5, 96, 7)
    assert restored.model_kwargs == [["box_batch_size_per_image", 32]]
    assert sorted(taken) == ["epochs", "lr", "min_size", "model_kwargs"]
    assert (args.lr, args.min_size) == (PARSER.get_default("lr"), PARSER.get_default("min_size"))  # not changed


def test_what_describes_this_command_is_never_taken():
    args, typed = _parsed("--resume", "c.pth")
    recorded = _recorded(device="cuda", resume="old.pth", test_only=True)
    restored, taken = flags.restore_recorded(args, recorded, typed, "c.pth")
    assert (restored.device, restored.resume, restored.test_only) == (args.device, "c.pth", False)
    assert taken == []


@pytest.mark.parametrize("flag, dest, value", [("--min-size", "min_size", "96"), ("--lr", "lr", "0.5")])
def test_a_typed_change_of_what_the_run_computes_is_refused_naming_both_values(flag, dest, value):
    args, typed = _parsed("--resume", "c.pth", flag, value)
    with pytest.raises(errors.UsageError, match=f"^{flag}: this command says {value} but c.pth was trained with 64"):
        flags.restore_recorded(args, _recorded(**{dest: 64}), typed, "c.pth")
    allowed, _ = _parsed("--resume", "c.pth", flag, value, "--allow-changed-flags")
    restored, taken = flags.restore_recorded(allowed, _recorded(**{dest: 64}), typed | {"allow_changed_flags"}, "c")
    assert str(getattr(restored, dest)) == value and taken == []


def test_free_flags_may_change_and_training_flags_are_free_for_test_only():
    args, typed = _parsed("--resume", "c.pth", "--epochs", "9")
    restored, _ = flags.restore_recorded(args, _recorded(epochs=3), typed, "c.pth")
    assert restored.epochs == 9
    evaluation, typed = _parsed("--resume", "c.pth", "--test-only", "--lr", "0.5")
    restored, _ = flags.restore_recorded(evaluation, _recorded(lr=0.02), typed, "c.pth")
    assert restored.lr == 0.5
    evaluation, typed = _parsed("--resume", "c.pth", "--test-only", "--min-size", "96")
    with pytest.raises(errors.UsageError, match="^--min-size"):
        flags.restore_recorded(evaluation, _recorded(min_size=64), typed, "c.pth")


def test_replaced_copies_and_leaves_the_parsed_flags_as_they_were():
    args, _ = _parsed("--lr", "0.1")
    copy = flags.replaced(args, lr=0.2, resume="r.pth")
    assert (copy.lr, copy.resume, args.lr, args.resume) == (0.2, "r.pth", 0.1, "")
