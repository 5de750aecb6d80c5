"""One parser and one rule for layer/head selections in every command and config file."""

from __future__ import annotations

import pytest

from attnviz.errors import InputError
from attnviz.selection import parse_indices, resolve_indices


def test_parse_forms():
    assert parse_indices("0,2,4-5", "--layers") == (0, 2, 4, 5)
    assert parse_indices("-1", "--layers") == (-1,)
    assert parse_indices("-3--1", "--layers") == (-3, -2, -1)
    assert parse_indices([1, 3], "heads") == (1, 3)
    assert parse_indices(2, "--layer") == (2,)
    assert parse_indices("all", "--heads") is None and parse_indices(None, "--heads") is None


@pytest.mark.parametrize(
    ("value", "needle"),
    [("3-1", "low to high"), ("a,b", "use numbers"), ("", "empty"), ([], "empty list"), ([1, "x"], "whole")],
)
def test_parse_rejects_with_option_and_file(value, needle):
    with pytest.raises(InputError, match=needle) as err:
        parse_indices(value, "layers", "run.toml")
    assert "layers in run.toml" in str(err.value)


def test_resolve_counts_negatives_from_the_end():
    assert resolve_indices((-1, 0, 0), 6, "layer", "m") == [0, 5]
    assert resolve_indices(None, 6, "layer", "m") is None
    with pytest.raises(InputError, match="layer 6 is out of range: m has layers 0-5"):
        resolve_indices((6,), 6, "layer", "m")


def test_format_indices_never_claims_an_index_that_is_not_there():
    """generation's old `_span` printed [0, 2, ..., 14] as '0-14'; six formatters had three rules."""
    from attnviz.selection import format_indices

    assert format_indices([0, 2, 4, 6, 8, 10, 12, 14]) == "0, 2, 4, 6, 8, 10, 12, 14"
    assert format_indices([0, 1, 2, 3, 5, 7, 8, 9]) == "0-3, 5, 7-9"
    assert format_indices(range(12)) == "0-11"
    assert format_indices([3]) == "3"
    assert format_indices([1, 2]) == "1, 2"
    assert format_indices([]) == ""
