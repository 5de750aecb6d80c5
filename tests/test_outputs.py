"""Output paths: default names that stay valid file names, and atomic, umask-respecting writes."""

from __future__ import annotations

import errno
import os

import pytest

from attnviz.outputs import atomic_output, default_name, output_path, write_error


def test_long_default_names_are_cut_readably_with_a_hash(tmp_path):
    model = "m" * 240  # a model folder with a 240-character name
    name = default_name("heatmap", "emily-always", model, "L1", "H5")
    assert len(name) <= 120 and name.endswith("-L1-H5.png") and name.startswith("heatmap-emily-always-mmm")
    other = default_name("heatmap", "emily-always", model + "x", "L1", "H5")
    assert other != name and len(other) == len(name)  # the hash tells cut names apart
    path = output_path(None, ("heatmap", "emily-always", model, "L1", "H5"))  # was: File name too long
    assert path.exists() and path.name == name
    assert default_name("heatmap", "short", "minilm") == "heatmap-short-minilm.png"  # short names unchanged


def test_atomic_output_renames_only_when_complete(tmp_path):
    target = tmp_path / "sub" / "x.bin"
    with atomic_output(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_bytes(b"done")
        assert not target.exists()
    assert target.read_bytes() == b"done"
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert target.read_bytes() == b"done" and sorted(p.name for p in target.parent.iterdir()) == ["x.bin"]


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_atomic_output_modes_follow_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        with atomic_output(tmp_path / "f.txt") as tmp:
            tmp.write_text("x")
        with atomic_output(tmp_path / "d", folder=True) as tmp:
            (tmp / "inner.txt").write_text("x")
    finally:
        os.umask(old)
    assert oct((tmp_path / "f.txt").stat().st_mode & 0o777) == oct(0o666 & ~mask)
    assert oct((tmp_path / "d").stat().st_mode & 0o777) == oct(0o777 & ~mask)
    assert oct((tmp_path / "d" / "inner.txt").stat().st_mode & 0o777) == oct(0o666 & ~mask)


def test_write_error_names_a_full_disk(tmp_path):
    message = write_error(tmp_path / "y.npz", OSError(errno.ENOSPC, "No space left on device"))
    assert message.startswith("no space left on the device to write") and "y.npz" in message
    assert write_error(tmp_path / "y.npz", OSError(errno.EACCES, "Permission denied")).endswith(
        "Permission denied"
    )


def test_messages_name_the_python_keyword_and_the_cli_its_flag(tmp_path, monkeypatch):
    """A Python caller never typed `-o`: `str()` names the keyword of the function it called."""
    import numpy as np

    from attnviz.errors import InputError, cli_terms
    from attnviz.outputs import check_output, write_arrays

    link = tmp_path / "link.png"
    link.symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(InputError) as info:
        check_output(link)
    assert str(info.value).endswith("does not write through links, give another output")
    assert info.value.render(cli_terms).endswith("give another -o")
    with pytest.raises(InputError) as info, atomic_output(link):
        pass
    assert str(info.value).endswith("give another path") and info.value.render(cli_terms).endswith("-o")
    # a full disk: plain words by default (a warning shows them as they are), a keyword when asked
    full = OSError(errno.ENOSPC, "No space left on device")
    assert write_error(tmp_path / "y.npz", full).endswith("free some space or choose another path")

    def no_space(*args, **kwargs):
        raise full

    monkeypatch.setattr(np, "savez_compressed", no_space)
    with pytest.raises(InputError) as info:
        write_arrays(tmp_path / "y.npz", {"a": np.zeros(2)}, "{}")
    assert str(info.value).endswith("choose another path")
    assert info.value.render(cli_terms).endswith("free some space or choose another -o")


# -- symbolic links: never written through, never replaced (issue 24) ----------------------------
LINKED_COMMANDS = {
    "heatmap": ["heatmap", "the cat sat", "-o", "{link}"],
    "toy": ["toy", "-o", "{link}"],
    "view": ["view", "the cat sat", "-o", "{link}"],
    "entropy": ["entropy", "the cat sat", "-o", "{link}"],
    "rollout": ["rollout", "the cat sat", "-o", "{link}"],
    "compare": ["compare", "the cat sat", "the dog sat", "-o", "{link}"],
    "find-head": ["find-head", "cat", "sat", "the cat sat", "--plot", "{link}"],
    "extract": ["extract", "the cat sat", "-o", "{link}"],
    "heads": ["heads", "the cat sat", "--plot", "{link}"],
    "ablate": ["ablate", "the cat sat", "--scan", "--plot", "{link}"],
}
SUFFIX = {"view": ".html", "extract": ".npz"}


@pytest.mark.parametrize("command", sorted(LINKED_COMMANDS))
@pytest.mark.parametrize("dangling", [False, True])
def test_o_onto_a_symbolic_link_is_refused_before_the_model(command, dangling, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from attnviz.cli import app

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the error")

    monkeypatch.setattr("attnviz.cli._options.load", refuse)
    suffix = SUFFIX.get(command, ".png")
    mine = tmp_path / f"mine{suffix}"
    if not dangling:
        mine.write_bytes(b"the user's own file")
    link = tmp_path / f"out{suffix}"
    link.symlink_to(mine)
    args = [a.replace("{link}", str(link)) for a in LINKED_COMMANDS[command]]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "symbolic link" in lines[0], result.stderr
    flag = "--plot" if "--plot" in args else "-o"  # the flag the path came in by, on the command line
    assert lines[0].endswith(f"give another {flag}"), lines[0]
    assert link.is_symlink() and os.readlink(link) == str(mine)
    assert mine.read_bytes() == b"the user's own file" if not dangling else not mine.exists()


def test_writers_refuse_links_and_write_into_linked_folders(tmp_path):
    from attnviz.errors import InputError
    from attnviz.outputs import check_output

    mine = tmp_path / "mine.bin"
    mine.write_bytes(b"mine")
    link = tmp_path / "link.bin"
    link.symlink_to(mine)
    with pytest.raises(InputError, match="symbolic link"), atomic_output(link) as tmp:
        tmp.write_bytes(b"ours")
    assert mine.read_bytes() == b"mine" and link.is_symlink()
    # a link to a folder is a place to put new files, under names that never overwrite
    (tmp_path / "real").mkdir()
    (tmp_path / "folder").symlink_to(tmp_path / "real")
    check_output(tmp_path / "folder")
    made = output_path(tmp_path / "folder", ("heatmap", "x"))
    assert made.parent == tmp_path / "folder" and (tmp_path / "real" / made.name).exists()


def test_library_savers_refuse_links(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from attnviz import plots
    from attnviz.errors import InputError
    from attnviz.views.notebook import HTMLView

    for name, write in [
        ("f.png", lambda p: plots.save(plt.figure(), p)),
        ("v.html", lambda p: HTMLView("<p>x</p>").save(p)),
    ]:
        mine = tmp_path / f"mine-{name}"
        mine.write_bytes(b"mine")
        link = tmp_path / name
        link.symlink_to(mine)
        with pytest.raises(InputError, match="symbolic link"):
            write(link)
        assert mine.read_bytes() == b"mine" and link.is_symlink()
    plt.close("all")


def test_cluster_refuses_a_linked_file_in_its_folder_before_the_model(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from attnviz.cli import app

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the error")

    monkeypatch.setattr("attnviz.cli._options.load", refuse)
    (tmp_path / "texts.txt").write_text("the cat sat\nthe dog ran\n")
    mine = tmp_path / "mine.csv"
    mine.write_text("mine")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "distances.csv").symlink_to(mine)
    result = CliRunner().invoke(app, ["cluster", str(tmp_path / "texts.txt"), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and "symbolic link" in result.stderr, result.output
    assert mine.read_text() == "mine"


def test_a_path_check_names_the_parameter_the_path_came_from(tmp_path, monkeypatch):
    """`-o` by default; `generate --view` and `--plot` say theirs, on the command line and in Python."""
    from attnviz.errors import InputError, cli_terms, param
    from attnviz.outputs import check_output
    from attnviz.views.generation import check_view_output

    (tmp_path / "mine.png").write_bytes(b"x")
    (tmp_path / "link.png").symlink_to(tmp_path / "mine.png")
    with pytest.raises(InputError) as default:
        check_output(tmp_path / "link.png")
    with pytest.raises(InputError) as plot:
        check_output(tmp_path / "link.png", param("plot"))
    assert str(default.value).endswith("give another output") and default.value.render(cli_terms).endswith(
        "-o"
    )
    assert plot.value.render(cli_terms).endswith("give another --plot")
    monkeypatch.setattr(
        "attnviz.outputs.os.access", lambda *a: False
    )  # a folder we may not write (even as root)
    with pytest.raises(InputError) as view:
        check_view_output(tmp_path / "page.html")
    assert str(view.value).endswith("choose another path")
    assert view.value.render(cli_terms).endswith("choose another --view")
