"""Strings as UTF-8 in one buffer: each string's bytes exactly as ``str.encode`` gives them."""

from __future__ import annotations

import pytest

from driftline.core.codec.utf8 import utf8_columns


def strings_of(columns):
    got = utf8_columns(columns)
    return [got.bytes_of(j) for j in range(len(columns))], got


@pytest.mark.parametrize("columns", [
    [["a", "", "größe", "x" * 300], ["€", "b", "", "\U0001F600"]],
    [["only"]],
    [["a\x00b", "c"], ["", "\x00"]],  # a NUL inside a string: no separator can be trusted
    [[""], [""], [""]],
])
def test_each_string_is_its_utf8(columns):
    got, table = strings_of(columns)
    assert got == [[s.encode() for s in column] for column in columns]
    assert table.starts.shape == table.lengths.shape == (len(columns), len(columns[0]))
    for j, column in enumerate(columns):
        for i, s in enumerate(column):
            start, length = table.starts[j, i], table.lengths[j, i]
            assert table.data[start:start + length].tobytes() == s.encode()


def test_no_strings():
    got, table = strings_of([[], []])
    assert got == [[], []]
    assert table.starts.shape == (2, 0)


def test_a_lone_surrogate_is_refused_as_str_encode_refuses_it():
    with pytest.raises(UnicodeEncodeError):
        utf8_columns([["ok", "\ud800"]])
