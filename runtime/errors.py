"""The one error type that means "the user gave us bad input": CLIs print it on one line and exit 2."""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """Bad or missing input. The message names the file and the problem, on one line."""

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else Path(path)
        self.problem = " ".join(str(problem).split())  # keep it on one line
        super().__init__(f"{self.path}: {self.problem}" if self.path is not None else self.problem)

    def __reduce__(self) -> tuple[type, tuple[Path | None, str]]:  # raised in a worker process, re-raised here
        return InputError, (self.path, self.problem)
