"""The pre-parse JSON checks agree with the parser on any document: depth measured on the
raw bytes equals the depth of what json.loads builds, and NaN/Infinity are found only
outside strings."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diffs_store.json_limits import nesting_depth, non_standard_constant

# Strings full of the characters that could fool a scanner: quotes, backslashes, brackets.
tricky = st.text(alphabet=st.sampled_from(list('ab"\\[]{}NaInfity\u00e9\U0001F600 ')), max_size=12)
documents = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | tricky,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(tricky, children, max_size=4),
    max_leaves=40,
)


def depth(doc) -> int:
    if isinstance(doc, list):
        return 1 + max((depth(x) for x in doc), default=0)
    if isinstance(doc, dict):
        return 1 + max((depth(x) for x in doc.values()), default=0)
    return 0


@settings(max_examples=300, deadline=None)
@given(documents, st.booleans())
def test_depth_matches_the_parsed_document(doc, ascii_only):
    text = json.dumps(doc, ensure_ascii=ascii_only)
    assert nesting_depth(text.encode()) == depth(doc)
    assert nesting_depth(text) == depth(doc)
    assert non_standard_constant(text.encode()) is None


@pytest.mark.parametrize("text, expected", [
    (b"[" * 100_000 + b"]" * 100_000, 100_000),
    (b'{"a":"' + b"[" * 1000 + b'"}', 1),
    (b'["\\\\", [["\\"["]]]', 3),
    (b"[[[", 3),  # malformed: what a parser would reach before failing
    (b"17", 0),
])
def test_depth_of_hand_written_cases(text, expected):
    assert nesting_depth(text) == expected


@pytest.mark.parametrize("text, found", [
    (b'{"a": NaN}', "NaN"), (b"[1, -Infinity]", "-Infinity"), (b"Infinity", "Infinity"),
    (b'["NaN", "x\\"Infinity"]', None), (b'{"NaN": 1}', None),
])
def test_non_standard_constants_outside_strings(text, found):
    assert non_standard_constant(text) == found
