"""cli/_output.py: the one printer behind every command's --json and text output."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from attnviz.cli._output import as_data, print_result


@dataclass(frozen=True)
class _Row:
    layer: int
    head: int


class _Result:
    def as_dict(self) -> dict:
        return {"z": 1, "a": (_Row(0, 1), Path("x/y.png"))}


def test_as_data_uses_as_dict_dataclasses_and_paths_keeping_key_order() -> None:
    assert as_data(_Result()) == {"z": 1, "a": [{"layer": 0, "head": 1}, "x/y.png"]}
    assert list(as_data({"b": 1, "a": 2})) == ["b", "a"]
    assert as_data([_Result(), None, 2.5]) == [as_data(_Result()), None, 2.5]


def test_json_has_the_extra_keys_last_and_the_summary_on_stderr(capsys) -> None:
    print_result(_Result(), True, lambda: print("never"), summary="said", output=Path("o.png"), token=None)
    out, err = capsys.readouterr()
    assert list(json.loads(out)) == ["z", "a", "output", "token"]
    assert json.loads(out)["output"] == "o.png" and err == "said\n"
    assert out == json.dumps(json.loads(out), indent=2, ensure_ascii=False) + "\n"  # one document


def test_text_is_a_function_a_string_or_lines_then_the_summary(capsys) -> None:
    print_result(_Result(), False, lambda: print("table"), summary="said")
    assert capsys.readouterr() == ("table\nsaid\n", "")
    print_result(_Result(), False, "one line")
    assert capsys.readouterr().out == "one line\n"
    print_result(_Result(), False, ["a", "b"])
    assert capsys.readouterr().out == "a\nb\n"


def test_json_keeps_non_ascii_text(capsys) -> None:
    print_result({"token": "été"}, True)
    assert '"été"' in capsys.readouterr().out
