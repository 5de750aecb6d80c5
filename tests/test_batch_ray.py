"""The Ray engine against a real local Ray instance (two CPUs, two workers, no mocks): the same
output folder as the local engine, a worker killed part way, resume across engines, and the
one-line errors of its options. One Ray instance serves the module (the command that must start
its own is the exception); tests that use Ray are `slow`, the option checks are not."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from attnviz.batch import HEADS_DIR, REJECTS_FILE, RUN_FILE, TEXTS_DIR, ray_engine, run_batch_analysis
from attnviz.batch.config import make_config, parse_probe
from attnviz.batch.ray_engine import DIE_ENV
from attnviz.cli import app
from attnviz.errors import AttnvizError, InputError, cli_terms

runner = CliRunner()
KEYS = ["text_id", "layer", "head"]
SENTENCES = [
    "Emily always wanted to visit Paris so she took some French lessons.",
    "The trophy did not fit in the suitcase because it was too big!",
    "The cat sat.",
    "A dog chased the cat across the garden, and she hid; transformers attend to tokens?",
]


@pytest.fixture(scope="module")
def ray_instance():
    """One local Ray instance for the module, as CI runs it: two CPUs, so two one-thread workers."""
    import ray

    ray.init(
        address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """22 records: an empty line and bad bytes (read rejects), two texts over max_length (rejected
    by the workers' tokenizer), the rest of varied lengths."""
    lines = [(SENTENCES[i % 4] + f" Number {i}.").encode() for i in range(22)]
    lines[3] = b""
    lines[8] = b"bad \xff bytes"
    lines[11] = b" ".join([b"long"] * 60)
    lines[17] = b" ".join([b"longer"] * 80)
    path = tmp_path_factory.mktemp("corpus") / "c.txt"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _config(model: Path, **kw):
    base = {
        "model": str(model),
        "probes": (parse_probe("she:Emily"),),
        "batch_size": 3,
        "texts_per_part": 5,
        "max_length": 64,
        "plots": False,
    }
    return make_config(**{**base, **kw})


def _ray(model: Path, **kw):
    return _config(model, **{"engine": "ray", "workers": 2, **kw})


@pytest.fixture(scope="module")
def reference(tiny_model_path, corpus, tmp_path_factory) -> Path:
    """The local engine's output folder: what every Ray run must equal."""
    out = tmp_path_factory.mktemp("local") / "out"
    run_batch_analysis(corpus, _config(tiny_model_path("bert"), save_attention=True), out)
    return out


def _table(folder: Path, sub: str = HEADS_DIR) -> pd.DataFrame:
    frame = pd.read_parquet(folder / sub)
    keys = KEYS if sub == HEADS_DIR else ["text_id"]
    return frame.sort_values(keys).reset_index(drop=True)


def _rejects(folder: Path) -> list[dict]:
    lines = (folder / REJECTS_FILE).read_text(encoding="utf-8").splitlines()
    return sorted((json.loads(x) for x in lines), key=lambda r: r["text_id"])


def _assert_same(out: Path, reference: Path, exact: bool = False) -> None:
    """Same rows (any order, each once), same texts table, same rejects as the local engine.

    Numbers agree to float32 rounding: a worker process may split a product's sums differently
    from the driver (thread count), and a resumed run batches the texts left differently.
    """
    got = _table(out)
    assert got.groupby(KEYS).size().max() == 1  # no text twice
    tolerance = {"check_exact": True} if exact else {"rtol": 1e-5, "atol": 1e-6}
    pd.testing.assert_frame_equal(got, _table(reference), **tolerance)
    pd.testing.assert_frame_equal(_table(out, TEXTS_DIR), _table(reference, TEXTS_DIR), check_exact=True)
    assert _rejects(out) == _rejects(reference)


@pytest.mark.slow  # a real Ray instance: minutes on 2 cores, so not in -m 'not slow'
def test_ray_output_equals_the_local_engine(
    ray_instance, tiny_model_path, corpus, reference, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # relative paths, as typed: the workers get them resolved
    model = Path(os.path.relpath(tiny_model_path("bert"), tmp_path))
    result = run_batch_analysis(corpus, _ray(model, save_attention=True), "out")
    out = tmp_path / "out"
    assert (result.status, result.processed, result.rejected) == ("complete", 18, 4)
    _assert_same(out, reference)
    assert {r["reason"] for r in _rejects(out)} == {"empty", "undecodable", "too_long"}
    # one part per chunk of 5 texts, numbered by chunk: chunks 0..3 of the 20 readable records
    assert sorted(p.name for p in (out / HEADS_DIR).iterdir()) == [f"part-{i:05d}.parquet" for i in range(4)]
    run = json.loads((out / RUN_FILE).read_text())
    assert run["engine"] == {"name": "ray", "workers": 2, "address": None}
    assert run["counts"] == json.loads((reference / RUN_FILE).read_text())["counts"]
    assert run["model"]["num_layers"] == 2 and run["timings"]["forward_s"] > 0
    # the workers' files are in the manifest (what --overwrite may delete), as the local engine's are
    assert {f"heads/part-{i:05d}.parquet" for i in range(4)} <= set(run["manifest"])
    # the raw tensors too: the same texts, the same values
    from safetensors.numpy import load_file

    def tensors(folder: Path) -> dict[str, np.ndarray]:
        return {
            k: v
            for f in sorted((folder / "_attention").glob("*.safetensors"))
            for k, v in load_file(f).items()
        }

    mine, theirs = tensors(out), tensors(reference)
    assert sorted(mine, key=int) == sorted(theirs, key=int) and len(mine) == 18
    for key, value in theirs.items():  # a worker's BLAS may split sums otherwise: float32 rounding
        np.testing.assert_allclose(mine[key], value, rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # a real Ray instance: minutes on 2 cores, so not in -m 'not slow'
def test_a_worker_killed_part_way_has_its_chunk_retried(
    ray_instance, tiny_model_path, corpus, reference, tmp_path, monkeypatch
):
    marker = tmp_path / "died"
    monkeypatch.setenv(DIE_ENV, str(marker))  # the first worker to get a batch dies (os._exit)
    out = tmp_path / "out"
    result = run_batch_analysis(corpus, _ray(tiny_model_path("bert"), save_attention=True), out)
    assert marker.is_file()  # a worker process did die...
    dead = int(marker.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(dead, 0)
    assert result.status == "complete" and result.processed == 18  # ...and nothing was lost or doubled
    _assert_same(out, reference)
    assert not list(out.rglob("*.tmp"))


@pytest.mark.slow  # a real Ray instance: minutes on 2 cores, so not in -m 'not slow'
def test_a_chunk_that_always_kills_its_worker_stops_the_run_in_one_line(
    ray_instance, tiny_model_path, tmp_path, monkeypatch
):
    monkeypatch.setenv(DIE_ENV, "always")
    monkeypatch.setattr(ray_engine, "RETRIES", 1)  # the real retry path, shorter
    out = tmp_path / "out"
    texts = [f"The cat sat on mat {i}." for i in range(4)]
    with pytest.raises(
        AttnvizError, match=r"^a Ray worker died 2 times on chunk 0 \(texts from id 0\); "
    ) as err:
        run_batch_analysis(texts, _ray(tiny_model_path("bert"), workers=1), out)
    assert "\n" not in str(err.value) and "rerun with resume=True" in str(err.value)
    assert "rerun with --resume" in err.value.render(cli_terms)
    assert json.loads((out / RUN_FILE).read_text())["status"] == "failed"
    assert not list((out / HEADS_DIR).iterdir())


@pytest.mark.slow  # a real Ray instance: minutes on 2 cores, so not in -m 'not slow'
def test_resume_after_an_interrupted_ray_run_and_across_engines(
    ray_instance, tiny_model_path, corpus, reference, tmp_path
):
    model = tiny_model_path("bert")

    def stop_after_a_part(p):
        if p.processed >= 1:
            raise KeyboardInterrupt

    # a Ray run stopped after its first part, then the debris of a kill: the statistics part of one
    # chunk lost (its texts part left behind) and a write cut short; the local engine resumes it
    out = tmp_path / "ray-then-local"
    with pytest.raises(KeyboardInterrupt):
        run_batch_analysis(corpus, _ray(model), out, progress=stop_after_a_part)
    assert json.loads((out / RUN_FILE).read_text())["status"] == "interrupted"
    parts = sorted((out / HEADS_DIR).glob("part-*.parquet"))
    assert parts and (out / TEXTS_DIR / parts[0].name).is_file()
    parts[0].unlink()
    (out / HEADS_DIR / ".part-00002.parquet.tmp").write_bytes(b"half")
    partial = pd.read_parquet(out / HEADS_DIR).text_id.nunique() if len(parts) > 1 else 0
    assert partial < 18
    result = run_batch_analysis(corpus, _config(model), out, resume=True)
    assert result.resumed == partial and result.resumed + result.processed == 18
    assert not list(out.rglob("*.tmp"))
    _assert_same(out, reference, exact=False)  # the orphan texts part is gone: each text once in _texts too

    # a local run stopped after its first part, resumed by the Ray engine
    out = tmp_path / "local-then-ray"
    with pytest.raises(KeyboardInterrupt):
        run_batch_analysis(corpus, _config(model, batch_size=5), out, progress=stop_after_a_part)
    partial = pd.read_parquet(out / HEADS_DIR).text_id.nunique()
    result = run_batch_analysis(corpus, _ray(model), out, resume=True)
    assert result.resumed == partial and result.resumed + result.processed == 18
    _assert_same(out, reference)
    run = json.loads((out / RUN_FILE).read_text())
    assert len(run["sessions"]) == 2 and run["status"] == "complete"


@pytest.mark.slow  # a real Ray instance: minutes on 2 cores, so not in -m 'not slow'
def test_worker_errors_come_back_as_one_line(ray_instance, tiny_model_path, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(InputError, match=r"^layer 7 is out of range") as err:
        run_batch_analysis(["a cat"], _ray(tiny_model_path("bert"), layers=(7,), workers=1), out)
    assert "\n" not in str(err.value)
    assert not out.exists()  # the folder made for the run is removed again
    with pytest.raises(InputError, match=r"workers=3 x threads=1 need 3 CPUs but the Ray cluster has 2"):
        run_batch_analysis(["a cat"], _config(tiny_model_path("bert"), engine="ray", workers=3), out)
    with pytest.raises(InputError, match="loads the model in each worker"):
        run_batch_analysis(["a cat"], _ray(tiny_model_path("bert")), out, model=object())  # type: ignore[arg-type]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--engine", "ray", "--workers", "0"], "error: workers must be at least 1"),
        (["--engine", "spark"], "error: unknown engine 'spark'; use local or ray"),
        (["--workers", "2"], "error: workers is only for the Ray engine"),
        (["--address", "auto"], "error: address is only for the Ray engine"),
        (["--engine", "ray", "--address", "nowhere"], "error: bad Ray address 'nowhere': use auto, ray://"),
    ],
)
def test_bad_engine_options_are_one_line(args, message, tmp_path):
    result = runner.invoke(app, ["batch", "-", "-o", str(tmp_path / "out"), *args], input="a cat\n")
    assert result.exit_code == 2
    assert result.output.startswith(message) and result.output.count("\n") == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("scheme", ["ray://", ""])
def test_an_unreachable_address_fails_fast_in_one_line(scheme, tmp_path, monkeypatch):
    """Fast by construction, not by a stopwatch: one bounded socket probe, and Ray's own connect
    (which retries for half a minute) is never reached."""
    import ray

    def no_init(*args, **kwargs):
        raise AssertionError("ray.init was reached: its retries are what the probe avoids")

    probes: list[float | None] = []
    real_connect = socket.create_connection

    def probe(address, timeout=None, *args, **kwargs):
        probes.append(timeout)
        return real_connect(address, timeout, *args, **kwargs)

    monkeypatch.setattr(ray, "init", no_init)
    monkeypatch.setattr(ray_engine.socket, "create_connection", probe)
    address = f"{scheme}127.0.0.1:{_free_port()}"
    result = runner.invoke(
        app, ["batch", "-", "-o", str(tmp_path / "out"), "--engine", "ray", "--address", address]
    )
    assert result.exit_code == 2
    assert result.output.startswith(f"error: cannot reach a Ray cluster at {address}: ")
    assert result.output.count("\n") == 1
    assert probes == [ray_engine.CONNECT_TIMEOUT_S] and 0 < ray_engine.CONNECT_TIMEOUT_S <= 5
    assert not (tmp_path / "out").exists()


def test_a_missing_ray_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as without Ray
    result = runner.invoke(
        app, ["batch", "-", "-o", str(tmp_path / "out"), "--engine", "ray"], input="a cat\n"
    )
    assert result.exit_code == 2
    assert result.output == "error: --engine ray needs Ray: pip install 'attnviz[ray]'\n"
    assert not (tmp_path / "out").exists()
    with pytest.raises(AttnvizError, match=r"^engine='ray' needs Ray: pip install 'attnviz\[ray\]'$"):
        run_batch_analysis(["a cat"], make_config(engine="ray"), tmp_path / "lib")


def test_messages_name_python_keywords_and_a_workers_error_keeps_its_marks():
    """A Python caller is told `workers=3`, the command line `--workers 3`; an AttnvizError raised in
    a worker crosses the process boundary (pickled, as Ray sends it) and is returned as it is."""
    import pickle
    from types import SimpleNamespace

    from attnviz.errors import param

    with pytest.raises(InputError) as info:
        ray_engine.check_fits(3, 2, 4, "this machine")
    assert (
        str(info.value)
        == "workers=3 x threads=2 need 6 CPUs but this machine has 4; ask for fewer workers or threads"
    )
    assert info.value.render(cli_terms).startswith("--workers 3 x --threads 2 need 6 CPUs")

    class RayError(Exception):
        pass

    class RayActorError(RayError):
        pass

    ray = SimpleNamespace(exceptions=SimpleNamespace(RayError=RayError, RayActorError=RayActorError))
    died = ray_engine.remote_error(ray, RayActorError("gone"), "chunk 0")
    assert "rerun with resume=True (fewer threads or a smaller batch_size need less memory)" in str(died)
    assert "rerun with --resume (fewer --threads or a smaller --batch-size need" in died.render(cli_terms)
    raised = pickle.loads(pickle.dumps(InputError(f"bad {param('max_length')} 1")))  # as a worker sends it
    failed = RayError("wrapped")
    failed.cause = raised
    assert ray_engine.remote_error(ray, failed, "chunk 0") is raised
    assert str(raised) == "bad max_length 1" and raised.render(cli_terms) == "bad --max-length 1"


@pytest.mark.slow  # a real Ray instance: minutes on 2 cores, so not in -m 'not slow'
def test_the_command_starts_and_stops_its_own_ray(corpus, reference, tmp_path, bert):
    """No cluster given: the command starts a local Ray instance and shuts it down; stdout is JSON."""
    out = tmp_path / "out"
    args = ["batch", str(corpus), "-o", str(out), "-m", bert, "--engine", "ray"]
    args += ["--workers", "1", "-b", "3", "--texts-per-part", "5", "--max-length", "64"]
    args += ["--probe", "she:Emily", "--no-plots", "--save-attention", "--json"]
    code = "from attnviz.cli import main; main()"
    env = {**os.environ, "RAY_ADDRESS": ""}
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["processed"] == 18
    assert "Ray" not in done.stderr and "INFO" not in done.stderr  # no start-up chatter
    _assert_same(out, reference)


def _descendants(pid: int) -> list[int]:
    """The processes started under `pid` (from /proc): the Ray instance a command started."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@pytest.mark.slow  # a real Ray instance: minutes on 2 cores, so not in -m 'not slow'
def test_resume_after_the_ray_command_is_killed(ray_instance, tiny_model_path, tmp_path):
    """kill -9 of a running `attnviz batch --engine ray`, then --resume. The command joins this
    module's Ray instance (`--address`): one local Ray for the module, not one more per test."""
    model = tiny_model_path("bert")
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(f"The cat number {i} sat on the mat." for i in range(300)) + "\n")
    out = tmp_path / "out"
    address = ray_instance.get_runtime_context().gcs_address
    cmd = [sys.executable, "-c", "from attnviz.cli import main; main()", "batch", str(corpus), "-o", str(out)]
    cmd += ["-m", str(model), "--engine", "ray", "--workers", "2", "-b", "1", "--texts-per-part", "5"]
    cmd += ["--no-plots", "--address", address]
    env = {**os.environ, "RAY_ADDRESS": ""}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not list(out.glob("heads/part-*.parquet")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no part was committed in time"
        time.sleep(0.02)
    started = _descendants(proc.pid)
    proc.kill()  # SIGKILL: no chance to clean up
    proc.wait()
    for pid in started:  # Ray's agents outlive a killed driver: stop what this test started
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert json.loads((out / RUN_FILE).read_text())["status"] == "running"  # it never got to say otherwise
    # The workers live in the module's Ray instance, not under the killed driver: Ray ends a dead
    # driver's actors within seconds, and a chunk in flight may still commit its part meanwhile.
    parts, settled = sorted(out.glob("heads/part-*.parquet")), time.monotonic() + 3
    while time.monotonic() < settled:
        time.sleep(0.2)
        now = sorted(out.glob("heads/part-*.parquet"))
        if now != parts:
            parts, settled = now, time.monotonic() + 3
        assert time.monotonic() < deadline + 60, "the killed driver's workers kept committing parts"
    before = pd.read_parquet(out / HEADS_DIR).text_id.nunique()
    assert 0 < before < 300
    config = make_config(
        model=str(model), engine="ray", workers=2, batch_size=1, texts_per_part=5, plots=False
    )
    result = run_batch_analysis(str(corpus), config, out, resume=True)
    assert (result.resumed, result.resumed + result.processed) == (before, 300)
    reference = tmp_path / "local"
    run_batch_analysis(str(corpus), make_config(model=str(model), plots=False), reference)
    _assert_same(out, reference)


def test_more_workers_than_the_machine_has_cpus_is_refused_before_ray_starts(tmp_path):
    """`--workers 100000` on a small machine: one line at once, not a local Ray waiting forever."""
    code = "from attnviz.cli import main; main()"
    args = ["batch", "-", "-o", str(tmp_path / "out"), "--engine", "ray", "--workers", "100000"]
    env = {**os.environ, "RAY_ADDRESS": ""}
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        input="a cat\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    cpus = ray_engine.local_cpus(make_config(engine="ray", workers=100000))
    assert cpus == os.cpu_count()
    assert done.returncode == 2, done.stderr
    assert done.stderr == (
        f"error: --workers 100000 x --threads 1 need 100000 CPUs but this machine has {cpus}; "
        "ask for fewer workers or threads\n"
    )
    assert not (tmp_path / "out").exists()


def test_workers_that_never_start_are_reported_after_the_stated_time():
    """A cluster that accepts the actors but never places them: one line after the timeout."""

    class Stuck:
        """Ray's wait as a cluster short of resources answers it: nothing ready."""

        def wait(self, refs, num_returns, timeout):
            assert timeout == 0.25 and num_returns == len(refs)
            return [], list(refs)

    with pytest.raises(
        InputError, match=r"^2 of 2 Ray workers did not start and load the model within 0.25 s"
    ):
        ray_engine.wait_ready(Stuck(), ["a", "b"], timeout=0.25)
