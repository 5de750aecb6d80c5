"""Batch configuration: TOML files, their checks, and the command line overriding them."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from attnviz.batch.config import (
    DEFAULT_STATISTICS,
    BatchConfig,
    load_config,
    make_config,
    parse_probe,
)
from attnviz.errors import InputError, cli_terms

REPO = Path(__file__).resolve().parents[1]


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults():
    cfg = BatchConfig()
    assert cfg.model == "minilm" and cfg.statistics == DEFAULT_STATISTICS and cfg.probes == ()
    assert not cfg.save_attention and cfg.plots and cfg.layers is None


@pytest.mark.parametrize("name", ["default", "coreference"])
def test_shipped_configs_load(name):
    cfg = make_config(REPO / "configs" / f"{name}.toml")
    assert cfg.source and cfg.source.endswith(f"{name}.toml")
    if name == "coreference":
        assert cfg.probes and all(p.a and p.b for p in cfg.probes)
    else:
        assert cfg.model == "minilm" and not cfg.save_attention


def test_default_toml_matches_the_defaults():
    """configs/default.toml spells out the defaults: loading it changes nothing."""
    cfg = make_config(REPO / "configs" / "default.toml")
    assert cfg == BatchConfig()


def test_bare_name_finds_configs_folder(tmp_path):
    (tmp_path / "configs").mkdir()
    _write(tmp_path / "configs" / "mine.toml", "[run]\nbatch_size = 8\n")
    assert make_config("mine").batch_size == 8  # tests run in tmp_path (conftest)
    with pytest.raises(InputError, match=r"no such config: missing .*shipped configs: coreference, default"):
        make_config("missing")


def test_bare_name_finds_the_shipped_configs_outside_a_checkout(tmp_path):
    """`--config coreference` (in the README) works from any folder: here, the checkout's configs/."""
    from attnviz.batch.config import find_config

    assert not (tmp_path / "configs").exists()  # tests run in tmp_path (conftest)
    assert find_config("coreference") == REPO / "configs" / "coreference.toml"
    assert make_config("coreference").probes
    (tmp_path / "configs").mkdir()
    _write(tmp_path / "configs" / "coreference.toml", "[run]\nbatch_size = 3\n")
    assert make_config("coreference").batch_size == 3  # your own configs/ comes first


def test_the_project_root_configs_is_the_one_copy():
    """Issue 28: configs/ at the root is the only home of the shipped configs (none in the package)."""
    assert sorted(p.name for p in (REPO / "configs").glob("*.toml")) == ["coreference.toml", "default.toml"]
    assert not list((REPO / "src").rglob("*.toml"))
    wheel = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]["wheel"]
    assert wheel["sources"]["configs"] == "attnviz/configs"  # the wheel maps configs/ into the package


FIND = (
    "import attnviz, sys; from attnviz.batch.config import find_config, make_config; "
    "assert make_config('coreference').probes; print(attnviz.__file__); print(find_config('coreference'))"
)


def _install(tmp_path: Path, editable: bool) -> tuple[Path, Path]:
    """Build attnviz's wheel (or its editable wheel) offline and install it, without dependencies,
    into a folder of its own: (that folder, a folder with no configs/ to run Python from)."""
    import subprocess
    import sys

    pytest.importorskip("hatchling")  # a dev dependency: the build backend, so the build is offline
    wheels, target, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    build = (
        f"from hatchling.build import build_{'editable' if editable else 'wheel'} as b; "
        f"print(b({str(wheels)!r}))"
    )
    made = subprocess.run([sys.executable, "-c", build], cwd=REPO, capture_output=True, text=True, check=True)
    wheel = made.stdout.strip().splitlines()[-1]
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(target)]
    subprocess.run([*pip, str(wheels / Path(wheel).name)], check=True, capture_output=True)
    return target, elsewhere


def _run_from(folder: Path, site: Path, editable: bool) -> list[str]:
    # -S: none of this interpreter's own site-packages (where the shared venv's attnviz is); the
    # installed folder is read as a site folder, so an editable install's .pth is honoured
    import os
    import subprocess
    import sys

    code = f"import site; site.addsitedir({str(site)!r}); {FIND}"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    args = [sys.executable, "-S", "-c", code]
    done = subprocess.run(args, cwd=folder, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_a_normal_install_finds_the_shipped_configs_from_any_folder(tmp_path):
    """A built wheel carries configs/ as attnviz/configs/: found with no checkout in sight."""
    site, elsewhere = _install(tmp_path, editable=False)
    package, config = _run_from(elsewhere, site, editable=False)
    assert Path(package).parent == site / "attnviz"
    assert Path(config) == site / "attnviz" / "configs" / "coreference.toml"
    assert Path(config).read_bytes() == (REPO / "configs" / "coreference.toml").read_bytes()


def test_an_editable_install_finds_the_shipped_configs_from_any_folder(tmp_path):
    """An editable install runs the checkout's src/ and reads the checkout's configs/: no copy."""
    site, elsewhere = _install(tmp_path, editable=True)
    package, config = _run_from(elsewhere, site, editable=True)
    assert Path(package).parent == REPO / "src" / "attnviz"
    assert Path(config) == REPO / "configs" / "coreference.toml"  # edits to configs/ count at once
    assert not (site / "attnviz").exists()  # nothing copied: no second copy to drift


def test_command_line_overrides_the_file(tmp_path):
    path = _write(
        tmp_path / "c.toml",
        """
[model]
name = "smollm2"
[run]
batch_size = 8
layers = "0-2"
[statistics]
keep = ["entropy"]
[[probes]]
a = "she"
b = ["Emily", "Anna"]
""",
    )
    from_file = make_config(path)
    assert (from_file.model, from_file.batch_size, from_file.layers) == ("smollm2", 8, (0, 1, 2))
    assert from_file.statistics == ("entropy",)
    assert from_file.probes[0].name == "she_emily" and from_file.probes[0].b == ("Emily", "Anna")
    # options left out (None) keep the file's values; given ones win
    merged = make_config(path, model=None, batch_size=64, layers="all", probes=(parse_probe("it:cat"),))
    assert merged.model == "smollm2" and merged.batch_size == 64 and merged.layers is None
    assert [p.name for p in merged.probes] == ["it_cat"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[modle]\nname = 'x'\n", "unknown section"),
        ("[run]\nbatchsize = 3\n", "unknown key 'batchsize'"),
        ("[run]\nbatch_size = 'big'\n", "batch_size must be a whole number"),
        ("[run]\nbatch_size = 0\n", "at least 1"),
        ("[input]\ntruncate = 1\n", "truncate must be true or false"),
        ("[statistics]\nkeep = ['entropy', 'vibes']\n", "unknown statistic 'vibes'"),
        ("[statistics]\nkeep = []\n", "nothing to record"),
        ("[[probes]]\na = 'x'\n", "needs a and b"),
        ("[[probes]]\na = 'x'\nb = 'y'\n[[probes]]\na = 'x'\nb = 'y'\n", "used twice"),
        ("[[probes]]\nname = 'a b'\na = 'x'\nb = 'y'\n", "letters, digits"),
        ("[run]\nlayers = '0-x'\n", "bad layers in .*value"),
        ("[run]\nlayers = '3-1'\n", r"bad layers in .*bad\.toml range '3-1': write it low to high \(1-3\)"),
        ("[run]\nheads = '3-1'\n", r"bad heads in .*bad\.toml range '3-1'"),
        ("[run]\nheads = '-1--3'\n", r"bad heads in .*range '-1--3'"),
        ("[run]\nlayers = []\n", r"layers in .*bad\.toml is an empty list"),
        ("[run]\nheads = ''\n", r"heads in .*bad\.toml is empty"),
        ("[run]\nlayers = 'a,b'\n", r"bad layers in .*bad\.toml value 'a,b'"),
        (
            "[model]\ntrust_remote_code = true\n",
            r"cannot be set in a config file .*pass trust_remote_code=True",
        ),
        ("not toml [", "not valid TOML"),
    ],
)
def test_bad_files_are_one_line_errors(tmp_path, text, message):
    path = _write(tmp_path / "bad.toml", text)
    with pytest.raises(InputError, match=message) as info:
        make_config(path)
    assert "\n" not in str(info.value).strip()


def test_probe_syntax():
    p = parse_probe("he|she:Emily")
    assert (p.name, p.a, p.b) == ("he_emily", ("he", "she"), ("Emily",))
    assert p.columns == ("probe_he_emily_ab", "probe_he_emily_ba")
    assert parse_probe("ante=it:trophy|suitcase").name == "ante"
    assert parse_probe("@1:@-2").name == "at1_at_2"
    for bad in ("nocolon", "a:b:c", ":b", "a:"):
        with pytest.raises(InputError, match="probe"):
            parse_probe(bad)
    # a name that is not an identifier is an error, not silently part of word A
    for bad in ("a b=she:Emily", "1st=she:Emily", "she-her=she:Emily", "=she:Emily"):
        with pytest.raises(InputError, match=r"bad probe name .*letters, digits and _"):
            parse_probe(bad)
    assert parse_probe("_x1=she:Emily").name == "_x1"


def test_trust_remote_code_comes_only_from_the_flag(tmp_path):
    assert (
        make_config(_write(tmp_path / "f.toml", "[model]\ntrust_remote_code = false\n")).trust_remote_code
        is False
    )
    flagged = make_config(trust_remote_code=True)  # what --trust-remote-code passes
    assert flagged.trust_remote_code
    text = flagged.to_toml()
    assert "trust_remote_code =" not in text  # --show-config never writes it into a file
    assert make_config(_write(tmp_path / "shown.toml", text)).trust_remote_code is False
    # the comment in its place is true for `--show-config` and for a Python caller of `to_toml()`
    assert "# trust_remote_code: a config file cannot enable it; only the command line or a Python" in text


def test_messages_name_python_keywords_and_the_cli_its_flags(tmp_path):
    """A Python caller never typed a flag: `str()` names the keyword, the command line the flag."""
    with pytest.raises(InputError) as info:
        make_config(_write(tmp_path / "t.toml", "[model]\ntrust_remote_code = true\n"))
    assert "pass trust_remote_code=True instead" in str(info.value) and "--" not in str(info.value)
    assert "pass --trust-remote-code instead" in info.value.render(cli_terms)
    with pytest.raises(InputError) as info:
        BatchConfig(workers=2)
    assert str(info.value) == "workers is only for the Ray engine; add engine ray (engine='ray')"
    assert info.value.render(cli_terms).endswith("add engine ray (--engine ray)")
    with pytest.raises(InputError) as info:
        parse_probe("a b=she:Emily")
    assert "(in probe='a b=she:Emily')" in str(info.value)
    assert "(in --probe a b=she:Emily)" in info.value.render(cli_terms)


def test_statistics_shorthands():
    assert make_config(statistics="all").statistics == (*DEFAULT_STATISTICS, "norm")  # norm: off by default
    assert make_config(statistics="entropy, special").statistics == ("entropy", "special")
    assert make_config(statistics="none", probes=(parse_probe("a:b"),)).statistics == ()


def test_to_toml_round_trips(tmp_path):
    cfg = make_config(layers=(0, 1), threads=2, probes=(parse_probe("he|she:Emily"),), truncate=True)
    text = cfg.to_toml()
    tomllib.loads(text)  # valid TOML
    again = make_config(_write(tmp_path / "round.toml", text))
    assert again == cfg


def test_identity_ignores_speed_settings():
    a = make_config(batch_size=8, device="cpu", threads=1)
    b = make_config(batch_size=64, device="auto")
    assert a.identity() == b.identity()
    assert a.identity() != make_config(layers=(0,)).identity()


def test_load_config_reports_the_file(tmp_path):
    path = _write(tmp_path / "x.toml", "[output]\nplots = false\ntexts_per_part = 100\n")
    values = load_config(path)
    assert values["plots"] is False and values["texts_per_part"] == 100
    assert values["source"] == str(path)
