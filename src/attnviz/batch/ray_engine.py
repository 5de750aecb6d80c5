"""The Ray engine: the same run as `run_batch_analysis`, its texts analysed by Ray actors.

The driver (this process) reads the corpus, writes read rejects, and cuts the texts not yet done
into chunks of `texts_per_part` (the local engine's bucketing windows, so the batches and the
numbers are the same). Each of `workers` actors loads the model once and turns a chunk into one
complete part, numbered by the chunk (so parts never collide), through the same atomic
temporary-name-then-rename as the local `Store`. A worker that dies is restarted and its chunks
are retried: a part is either absent or complete, and writing it again writes the same bytes, so
no text is lost or duplicated. Resume reads the committed parts, whichever engine wrote them.

The output folder must be on a file system every Ray node sees (the driver holds its lock).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attnviz import __version__
from attnviz.batch.analyzer import Analyzer, BatchResult, Timings
from attnviz.batch.config import BatchConfig
from attnviz.batch.corpus import Item, Reject, Source
from attnviz.batch.lifecycle import BatchRun, RunProgress, RunState, Windows, drive, model_record
from attnviz.batch.records import events, free_cpus, load
from attnviz.batch.store import HEADS_DIR, OutputError, OutputFolder, PartWriter
from attnviz.errors import AttnvizError, InputError, param

if TYPE_CHECKING:
    from attnviz.models.loading import LoadedModel

RETRIES = 3  # times a chunk is retried after its worker died
CONNECT_TIMEOUT_S = 3.0  # an --address that does not answer within this fails
START_TIMEOUT_S = 600.0  # workers that have not loaded the model by then are reported, not awaited
IN_FLIGHT = 2  # chunks queued per worker: one running, one ready
# Test hook: a path: the first worker to find no file there creates it and dies part way through
# its chunk (os._exit), as a killed or crashed worker process would; "always": every worker dies so.
DIE_ENV = "ATTNVIZ_RAY_TEST_DIE"
INSTALL_HINT = f"{param('engine', 'ray')} needs Ray: pip install 'attnviz[ray]'"


@dataclass(frozen=True)
class ChunkDone:
    """What a worker sends back for a chunk: its part, counts, tokenizer rejects and timings."""

    chunk: int
    part: int
    texts: int  # texts in the part (0: every text was rejected, no part written)
    rejects: tuple[Reject, ...]
    timings: dict[str, float]
    written: dict[str, list[Any]] = field(default_factory=dict)  # the manifest entries of its files


class ChunkWorker:
    """A Ray actor: loads the model once (again after a restart), then writes one part per chunk."""

    def __init__(self, config: BatchConfig, outdir: str, die: str | None = None) -> None:
        self.config = config
        self.outdir = Path(outdir)
        self.die = die
        self.analyzer: Analyzer | None = None
        self.load_seconds = 0.0

    def _ready(self) -> Analyzer:
        if self.analyzer is None:
            import torch

            torch.set_num_threads(self.config.threads or 1)
            start = time.perf_counter()
            self.analyzer = Analyzer(load(self.config, None), self.config)
            self.load_seconds = time.perf_counter() - start
        return self.analyzer

    def describe(self) -> dict[str, Any]:
        """The model as `_run.json` records it, loaded here (its one-line errors reach the driver)."""

        analyzer = self._ready()
        return {**model_record(analyzer), "attnviz": __version__, "load_seconds": self.load_seconds}

    def run(self, chunk: int, part: int, items: list[Item]) -> ChunkDone:
        """Analyse one chunk (one bucketing window) and write it as part `part`."""
        analyzer = self._ready()
        if not (self.outdir / HEADS_DIR).is_dir():
            raise OutputError(
                f"{self.outdir} is not visible from the Ray worker on {socket.gethostname()}; "
                "the output folder must be on a file system every node shares"
            )
        analyzer.timings = Timings()
        writer = PartWriter(self.outdir, analyzer, part)
        results: list[BatchResult] = []
        rejects: list[Reject] = []
        for ev in events(items, analyzer):
            if isinstance(ev, Reject):
                rejects.append(ev)
            elif isinstance(ev, BatchResult):
                writer.save_attention(ev)
                results.append(ev)
                self._maybe_die()
        texts = writer.commit(results)
        timings = dict(analyzer.timings.__dict__)
        return ChunkDone(chunk, part, texts, tuple(rejects), timings, dict(writer.written))

    def _maybe_die(self) -> None:
        if self.die == "always":
            os._exit(1)
        if self.die and not os.path.exists(self.die):
            Path(self.die).write_text(str(os.getpid()), encoding="utf-8")
            os._exit(1)


@dataclass
class Described:
    """The driver's view of the workers' analyzer: what RunState and Store need, no model loaded."""

    config: BatchConfig
    record: dict[str, Any]
    timings: Timings = field(default_factory=Timings)

    @property
    def model_name(self) -> str:
        return str(self.record["model"]["name"])

    @property
    def layer_ids(self) -> list[int]:
        return list(self.record["layers"])

    @property
    def head_ids(self) -> list[int]:
        return list(self.record["heads"])

    @property
    def columns(self) -> list[str]:
        return list(self.record["columns"][4:])

    def add(self, timings: dict[str, float]) -> None:
        for key, value in timings.items():
            setattr(self.timings, key, getattr(self.timings, key) + value)


def import_ray() -> Any:
    """Ray, or the one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise InputError(INSTALL_HINT) from None
    return ray


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail fast, in one line, on an --address nothing answers at (Ray itself waits much longer)."""
    if address == "auto":
        return
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    why = ""
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        why = (
            f"no answer within {timeout:g} s" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        )
    if not why:  # something listens: Ray's client server and GCS both speak gRPC (HTTP/2)
        try:
            import grpc
        except ImportError:
            raise InputError(
                f"connecting to {address} needs Ray's client: pip install 'attnviz[ray]'"
            ) from None
        channel = grpc.insecure_channel(target)
        try:
            why = _ping(grpc, channel, address.startswith("ray://"), timeout)
        finally:
            channel.close()
    if why:
        raise InputError(
            f"cannot reach a Ray cluster at {address}: {why}; check {param('address')}, "
            "or leave it out to start a local Ray instance"
        )


def _ping(grpc: Any, channel: Any, client: bool, timeout: float) -> str:
    """Ask the Ray client server (ray://) or the GCS for its cluster: '' when a Ray answered, even
    to refuse us (authentication), else why not. Ray's own retries would take half a minute."""
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        return f"no gRPC answer within {timeout:g} s"
    try:
        if client:
            from ray.core.generated import ray_client_pb2, ray_client_pb2_grpc

            stub = ray_client_pb2_grpc.RayletDriverStub(channel)
            ping = ray_client_pb2.ClusterInfoRequest(type=ray_client_pb2.ClusterInfoType.PING)
            stub.ClusterInfo(ping, timeout=timeout)
        else:
            from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

            stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
            stub.GetClusterId(gcs_service_pb2.GetClusterIdRequest(), timeout=timeout)
    except (ImportError, AttributeError):  # another Ray's private stubs: let ray.init decide
        return ""
    except grpc.RpcError as exc:
        code = exc.code()
        silent = (
            grpc.StatusCode.UNIMPLEMENTED,
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        )
        if code in silent:
            return f"something answers but not Ray ({code.name})"
    return ""


@contextlib.contextmanager
def cluster(config: BatchConfig) -> Iterator[Any]:
    """Ray connected: to `config.address`, to the instance this process already started, or to a
    local instance started here and shut down on the way out."""
    ray = import_ray()
    if config.address is not None:
        check_reachable(config.address)
    with _quiet():
        if ray.is_initialized():
            yield ray
            return
        options: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
        if config.address is None:
            cpus = local_cpus(config)
            check_fits(config.workers or 1, config.threads or 1, cpus, "this machine")
            options.update(address="local", num_cpus=cpus, include_dashboard=False)
        else:
            options["address"] = config.address
        try:
            ray.init(**options)
        except Exception as exc:  # Ray's own errors: ConnectionError, RuntimeError, ValueError...
            where = config.address or "a local Ray instance"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(f"cannot start or reach Ray ({where}): {first}") from None
        try:
            yield ray
        finally:
            with contextlib.suppress(Exception):
                ray.shutdown()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No Ray chatter while a run lasts (--json output stays clean): its `ray` logger says only
    errors, and what its raylets report (a worker died, its task is retried), which Ray prints on
    the driver's stdout, goes to that logger instead (a private hook: left alone if it is gone)."""
    import ray._private.worker as worker

    logger = logging.getLogger("ray")
    level = logger.level
    original = getattr(worker, "print_to_stdstream", None)

    def to_log(data: dict[str, Any], ignore_prefix: bool = False) -> None:
        logger.info("%s", "\n".join(data.get("lines", [])))

    logger.setLevel(logging.ERROR)
    if original is not None:
        worker.print_to_stdstream = to_log
    try:
        yield
    finally:
        logger.setLevel(level)
        if original is not None:
            worker.print_to_stdstream = original


def local_cpus(config: BatchConfig) -> int:
    """The CPUs a local Ray instance offers: the machine's (never more: a worker count it cannot
    place would wait for CPUs forever), or one worker's threads if those are more."""
    return max(os.cpu_count() or 1, config.threads or 1)


def check_fits(workers: int, threads: int, cpus: int, where: str) -> None:
    """Refuse at once what Ray would otherwise wait on forever: more CPUs than there are."""
    if workers * threads > cpus:
        raise InputError(
            f"{param('workers', workers)} x {param('threads', threads)} need {workers * threads} CPUs "
            f"but {where} has {cpus}; ask for fewer workers or threads"
        )


def wait_ready(ray: Any, refs: list[Any], timeout: float | None = None) -> list[dict[str, Any]]:
    """The workers' descriptions once each has loaded the model; one line if some never start
    (a cluster short of memory or of a resource it did not report) instead of waiting forever."""
    timeout = START_TIMEOUT_S if timeout is None else timeout
    _, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout)
    if pending:
        raise InputError(
            f"{len(pending)} of {len(refs)} Ray workers did not start and load the model within "
            f"{timeout:g} s; the cluster cannot place them: ask for fewer workers"
        )
    try:
        return ray.get(refs)
    except ray.exceptions.RayError as exc:
        raise remote_error(ray, exc, "loading the model") from None


def start_workers(ray: Any, config: BatchConfig, outdir: Path) -> list[Any]:
    """`workers` actors (default: the cluster's CPUs / threads), refused at once if they cannot fit."""
    threads = config.threads or 1
    cpus = int(ray.cluster_resources().get("CPU", 0))
    # a local instance shares this machine: by default a worker per CPU other work leaves free
    free = min(cpus, free_cpus()) if config.address is None else cpus
    n = config.workers or max(1, free // threads)
    check_fits(n, threads, cpus, "the Ray cluster")
    gpus = 1 if config.device.startswith("cuda") else 0
    actor = ray.remote(ChunkWorker).options(
        num_cpus=threads, num_gpus=gpus, max_restarts=-1, max_task_retries=RETRIES
    )
    die = os.environ.get(DIE_ENV)
    # paths as this process sees them: a worker's current folder is not the driver's
    model = Path(config.model).expanduser()
    if model.exists():
        config = dataclasses.replace(config, model=str(model.resolve()))
    return [actor.remote(config, str(outdir.resolve()), die) for _ in range(n)]


def remote_error(ray: Any, exc: BaseException, what: str) -> AttnvizError:
    """A worker's failure as one line: our own errors as they are, the rest named."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, AttnvizError):
        return cause
    if isinstance(exc, ray.exceptions.RayActorError):
        return AttnvizError(
            f"a Ray worker died {RETRIES + 1} times on {what}; every part committed is kept, "
            f"rerun with {param('resume', True)} (fewer {param('threads')} or a smaller "
            f"{param('batch_size')} need less memory)"
        )
    err = cause if isinstance(cause, BaseException) else exc
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return AttnvizError(f"a Ray worker failed on {what}: {type(err).__name__}: {first}")


def run_on_ray(
    source: Source,
    config: BatchConfig,
    folder: OutputFolder,
    progress: Callable[[RunProgress], None] | None,
    model: LoadedModel | None = None,
) -> BatchRun:
    """`run_batch_analysis` with engine ray: the driver reads and records, the actors analyse."""
    if model is not None:
        raise InputError("the Ray engine loads the model in each worker: give it by name in the config")
    with cluster(config) as ray:
        engine = RayEngine(ray, config, folder.outdir)
        try:
            return drive(engine, source, config, folder, progress)
        finally:
            engine.close()


class RayEngine:
    """The lifecycle's engine on Ray: chunks (one window each) sent to actors, parts written there."""

    def __init__(self, ray: Any, config: BatchConfig, outdir: Path) -> None:
        self.ray = ray
        self.config = config
        self.outdir = outdir
        self.workers: list[Any] = []
        self.info: Described | None = None
        self.chunks: _Chunks | None = None
        self.details: dict[str, Any] | None = None

    def prepare(self) -> tuple[Described, dict[str, Any]]:
        """Start the actors; each loads the model, and they must agree on attnviz's version."""
        ray = self.ray
        self.workers = start_workers(ray, self.config, self.outdir)
        described = wait_ready(ray, [w.describe.remote() for w in self.workers])
        _check_versions(described)
        record = {k: described[0][k] for k in ("model", "layers", "heads", "columns")}
        self.info = Described(self.config, record)
        self.details = {"name": "ray", "workers": len(self.workers), "address": self.config.address}
        return self.info, record

    def analyse(self, windows: Windows, state: RunState) -> None:
        """Send each window as a chunk (at most IN_FLIGHT per worker); record parts as they come."""
        self.chunks = chunks = _Chunks(self.ray, self.workers)
        base = state.store.next_part
        n = 0
        for window in windows:
            if isinstance(window, Reject):
                state.reject(window)
                continue
            while chunks.full():
                self._done(state, chunks.next_done())
            chunks.submit(n, base + n, window)
            n += 1
        while chunks.flight:
            self._done(state, chunks.next_done())

    def salvage(self, state: RunState, interrupted: bool) -> None:
        """Chunks already sent are worth keeping, unless the user asked to stop now."""
        while not interrupted and self.chunks is not None and self.chunks.flight:
            self._done(state, self.chunks.next_done())

    def _done(self, state: RunState, done: ChunkDone) -> None:
        """A chunk's part is committed (by its worker): count it, then write its tokenizer rejects."""
        assert self.info is not None
        self.info.add(done.timings)
        state.store.written.update(done.written)
        for rej in done.rejects:
            state.reject(rej)
        state.committed(done.texts, done.part)

    def close(self) -> None:
        """Kill the workers and wait until they are gone: `ray.kill` returns at once, and a worker
        still finishing its chunk would write into the folder after the run has returned."""
        for w in self.workers:
            with contextlib.suppress(Exception):
                self.ray.kill(w)
        for w in self.workers:
            with contextlib.suppress(Exception):  # RayActorError once dead (the answer we wait for)
                self.ray.get(w.__ray_ready__.remote(), timeout=30)


def _check_versions(described: list[dict[str, Any]]) -> None:
    other = [d["attnviz"] for d in described if d["attnviz"] != __version__]
    if other:
        raise InputError(
            f"the Ray workers run attnviz {other[0]} but this is {__version__}; install one version on all"
        )


class _Chunks:
    """Chunks in flight: at most IN_FLIGHT per worker, each sent to the least busy one."""

    def __init__(self, ray: Any, workers: list[Any]) -> None:
        self.ray = ray
        self.workers = workers
        self.busy = [0] * len(workers)
        self.flight: dict[Any, tuple[int, int, int]] = {}  # ref -> (worker, chunk, first text id)

    def full(self) -> bool:
        return len(self.flight) >= IN_FLIGHT * len(self.workers)

    def submit(self, chunk: int, part: int, items: list[Item]) -> None:
        w = min(range(len(self.workers)), key=self.busy.__getitem__)
        ref = self.workers[w].run.remote(chunk, part, items)
        self.busy[w] += 1
        self.flight[ref] = (w, chunk, items[0].text_id)

    def next_done(self) -> ChunkDone:
        [ref], _ = self.ray.wait(list(self.flight), num_returns=1)
        w, chunk, first = self.flight.pop(ref)
        self.busy[w] -= 1
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayError as exc:
            raise remote_error(self.ray, exc, f"chunk {chunk} (texts from id {first})") from None
