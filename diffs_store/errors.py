"""Errors raised by the diff store.

Every refusal carries a stable machine-readable ``code`` so the CLI can print one line and the
service can map it to an HTTP status (``fingerprint_mismatch`` -> 409, the rest -> 422)
without parsing messages.
"""

from __future__ import annotations


class DiffError(Exception):
    """A diff file or its metadata was refused. ``code`` names the class of problem."""

    code: str = "invalid_diff"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:  # one line, suitable for stderr and HTTP details
        return f"{self.code}: {self.message}"


class RegistryError(Exception):
    """The registry could not do what was asked (unknown id, unreachable Redis, ...)."""


class NotFound(RegistryError):
    """No diff matches the requested id / key."""


# Stable codes, listed once so tests and docs can refer to them.
NOT_SAFETENSORS = "not_safetensors"
TRUNCATED = "truncated"
HEADER_TOO_LARGE = "header_too_large"
FILE_TOO_LARGE = "file_too_large"
BAD_METADATA = "bad_metadata"
BAD_LAYOUT = "bad_layout"
BAD_DTYPE = "bad_dtype"
LENGTH_MISMATCH = "length_mismatch"
UNSORTED_INDICES = "unsorted_indices"
INDEX_OUT_OF_RANGE = "index_out_of_range"
NON_FINITE = "non_finite"
UNKNOWN_TENSOR = "unknown_tensor"
HEAD_SHAPE = "head_shape"
FINGERPRINT_MISMATCH = "fingerprint_mismatch"
NESTED_TOO_DEEP = "nested_too_deep"  # JSON in the header or metadata nested beyond json_limits.MAX_DEPTH
BAD_REFERENCE = "bad_reference"  # a composable-sft pytorch_diff.bin we refuse to import
