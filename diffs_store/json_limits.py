"""Checks on untrusted JSON text made before it is parsed.

Python's ``json`` parser and everything that walks its result recurse once per level of
nesting, so a few kilobytes of ``[[[[...`` raise RecursionError far from the input (in a
validator, an encoder, a character count). The depth is measured here on the raw bytes with
whole-array numpy passes (which bytes are inside string literals, then a running sum of
brackets outside them), so a refusal costs a few passes over the bytes and never recurses.
Used for the safetensors header and metadata of diff files and for the service's JSON
request bodies.
"""

from __future__ import annotations

import re

import numpy as np

# Deepest nesting accepted anywhere untrusted JSON enters: a diff header needs 3 levels, a
# recipe a handful, a request body 4; this leaves ample room and stays far from the
# interpreter's recursion limit.
MAX_DEPTH = 32

_QUOTE, _BACKSLASH = 0x22, 0x5C
# Openers to +1, closers to -1 (as int8), every other byte to 0.
_SIGN = bytes(1 if b in b"[{" else 255 if b in b"]}" else 0 for b in range(256))
_NON_STANDARD = re.compile(rb"NaN|-?Infinity")


def _as_bytes(text: bytes | str) -> bytes:
    return text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text


def _in_string(a: np.ndarray) -> np.ndarray:
    """For each byte, 1 when it lies inside a string literal (the opening quote included).

    A quote opens or closes a string unless an odd run of backslashes precedes it; in JSON
    backslashes occur only inside strings, so that rule is exact for valid text.
    """
    quotes = (a == _QUOTE).view(np.uint8).copy()
    slashes = np.flatnonzero(a == _BACKSLASH)
    if slashes.size:
        breaks = np.flatnonzero(np.diff(slashes) != 1)
        ends = np.append(slashes[breaks], slashes[-1])
        starts = np.insert(slashes[breaks + 1], 0, slashes[0])
        after = ends + 1
        escaped = after[((ends - starts) % 2 == 0) & (after < a.size)]  # odd run length
        quotes[escaped[a[escaped] == _QUOTE]] = 0
    return np.bitwise_xor.accumulate(quotes)


def nesting_depth(text: bytes | str) -> int:
    """The deepest level of nested arrays and objects in ``text`` (0 for a scalar), without
    parsing it. For malformed text, the deepest point its brackets reach: what a parser
    would recurse to before it noticed."""
    data = _as_bytes(text)
    if data.count(b"[") + data.count(b"{") == 0:
        return 0
    signs = np.frombuffer(data.translate(_SIGN), dtype=np.int8)
    outside = signs * (1 - _in_string(np.frombuffer(data, dtype=np.uint8)).view(np.int8))
    return max(int(outside.cumsum(dtype=np.int32).max()), 0)


def non_standard_constant(text: bytes | str) -> str | None:
    """``NaN``, ``Infinity`` or ``-Infinity`` when ``text`` holds one outside a string.

    Python's parser accepts them, JSON does not, and a float NaN then breaks whatever
    encodes it back (an error message quoting the input, a response)."""
    data = _as_bytes(text)
    found = [m for m in _NON_STANDARD.finditer(data)]
    if not found:
        return None
    inside = _in_string(np.frombuffer(data, dtype=np.uint8))
    for m in found:
        if not inside[m.start()]:
            return m.group().decode()
    return None
