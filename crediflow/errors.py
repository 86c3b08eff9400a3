"""Errors that name what to fix: the file, the row or line, and the field."""

from __future__ import annotations


class CrediflowError(Exception):
    """Base class of every error crediflow raises on purpose."""


class InputError(CrediflowError):
    """An input cannot be used as given; the message says where and why."""

    def __init__(
        self,
        reason: str,
        *,
        file: str | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.reason, self.file, self.line, self.field = reason, file, line, field
        where = ", ".join(
            part
            for part in (
                file and f"file {file}",
                line is not None and f"line {line}",
                field and f"field {field!r}",
            )
            if part
        )
        super().__init__(f"{where}: {reason}" if where else reason)


class TooManyRejectsError(CrediflowError):
    """The share of rejected input rows passed the configured limit."""
