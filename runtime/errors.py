"""The error types CLIs turn into one line and an exit code: bad input (exit 2), and work that stopped early for a
reason outside the input, to be resumed by a rerun (exit 3)."""

from __future__ import annotations

from pathlib import Path


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): what a one-line error quotes of
    a library's multi-line one."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class InputError(Exception):
    """Bad or missing input. The message names the file and the problem, on one line."""

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else Path(path)
        self.problem = " ".join(str(problem).split())  # keep it on one line
        super().__init__(f"{self.path}: {self.problem}" if self.path is not None else self.problem)

    def __reduce__(self) -> tuple[type, tuple[Path | None, str]]:  # raised in a worker process, re-raised here
        return InputError, (self.path, self.problem)


class StaleExportError(InputError):
    """An exported graph beside a checkpoint other than the one it came from: never skipped over by ``auto``."""


class IncompleteError(Exception):
    """A long job stopped before its end (a site's rate limit, a spent budget, network errors); its finished work
    is kept and rerunning the same command resumes it. The message says why, on one line."""
