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


class ConfigError(CrediflowError):
    """A setting is unknown, of the wrong type or out of range; the message names where it was
    set (params.yaml's section and key, or the command-line flag) and what is allowed."""

    def __init__(self, reason: str, *, source: str | None = None, section: str | None = None,
                 key: str | None = None) -> None:
        self.reason, self.source, self.section, self.key = reason, source, section, key
        if source == "the command line":
            where = f"command line, flag --{key.replace('_', '-')}" if key else "command line"
        elif source:
            where = ", ".join(p for p in (source, section and f"section {section!r}",
                                          key and f"key {key!r}") if p)
        else:
            where = ", ".join(p for p in (section and f"{section} config",
                                          key and f"field {key!r}") if p)
        super().__init__(f"{where}: {reason}" if where else reason)

    def with_source(self, source: str) -> ConfigError:
        """The same error, said to come from `source` (e.g. "params.yaml")."""
        return ConfigError(self.reason, source=source, section=self.section, key=self.key)
