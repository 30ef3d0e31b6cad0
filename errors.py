"""The errors a user can fix, and how they are said: one line naming the flag or file, exit status 2.

train.py and predict.py print a UsageError (a DataError is one) as one "error:" line and exit with status 2;
warn() writes one "warning:" line from any rank.
"""

import argparse
import sys


class UsageError(Exception):
    """A problem the user can fix (a flag, a file); train.py prints it as one line and exits with status 2."""


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse, whose errors (an unknown flag, a value of the wrong type) are one "error:" line and exit status 2,
    not the whole usage text."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (python {self.prog} --help lists the flags)\n")


class DataError(UsageError):
    """A problem with the dataset's files, reported as one line naming the file.

    Raised inside a DataLoader worker, it reaches the main process re-raised by torch with the
    worker's whole traceback as its message; the constructor keeps only the original line, so the
    user still reads one line (train.py catches it as a UsageError).
    """

    def __init__(self, message: str):
        if message.startswith(f"Caught {type(self).__name__}") and "Original Traceback" in message:
            last = message.rstrip().splitlines()[-1]
            message = last.partition(f"{type(self).__name__}: ")[2] or last
        super().__init__(message)


def warn(message: str) -> None:
    """One "warning:" line on stderr: in distributed runs print() is silenced on all ranks but 0, and any rank can
    meet what it warns of (a bad file)."""
    sys.stderr.write(f"warning: {message}\n")
    sys.stderr.flush()


def short_reason(error: Exception) -> str:
    """The telling line of a library's error message (torch.load's run to a dozen lines)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    telling = [line for line in lines if "Unsupported" in line] or lines
    return telling[0][:200] if telling else type(error).__name__
