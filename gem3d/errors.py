"""One home for input errors: each names the offending file and the reason, so a batch can quarantine it."""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """A problem with one input file; the rest of the batch goes on."""

    kind = "invalid-input"

    def __init__(self, path: str | Path | None, reason: str) -> None:
        self.path = str(path) if path is not None else ""
        self.reason = reason
        super().__init__(f"{self.path}: {reason}" if self.path else reason)

    def as_record(self) -> dict[str, str]:
        """A flat record for quarantine reports."""
        return {"path": self.path, "kind": self.kind, "reason": self.reason}


class UnreadableFileError(InputError):
    kind = "unreadable"


class MissingFileError(InputError):
    kind = "missing-file"


class PathOutsideDatasetError(InputError):
    kind = "path-outside-dataset"


class GeometryMismatchError(InputError):
    kind = "geometry-mismatch"


class DimensionError(InputError):
    kind = "wrong-dimensions"


class NonFiniteError(InputError):
    kind = "non-finite"


class LabelError(InputError):
    kind = "invalid-labels"


class EmptyImageError(InputError):
    kind = "empty-image"


class TooFewSlicesError(InputError):
    kind = "too-few-slices"


class DatasetLayoutError(InputError):
    kind = "unknown-layout"


class InvalidEditError(InputError):
    kind = "invalid-edit"


class StoreError(InputError):
    kind = "store"
