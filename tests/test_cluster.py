"""Per-video work as Ray tasks on a real local cluster (127.0.0.1): segment-videos and the crawl give the same
outputs as the local executor, a worker killed mid-task loses nothing (Ray retries the task), and a run whose
whole cluster died is finished by a rerun on a new cluster (the output folder is the manifest)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_crawl import (
    CLASSES,
    RATE_LIMIT,
    load_brightness_scorer,
    manifest_without_times,
    network_rejections,
    serve_clips,
    small_config,
    write_pages,
)
from test_segment_videos import write_davis_videos

from wsvs.runtime.cli import main
from wsvs.runtime.errors import IncompleteError
from wsvs.runtime.executor import ExecutorConfig
from wsvs.runtime.io import is_hidden, read_json
from wsvs.training.crawl import crawl
from wsvs.training.demo_world.loopback_site import LoopbackServer

# Ray replaces 127.0.0.1 by the machine's outward address unless told to stay on the loopback interface (the
# driver, this process, reads it when ray is imported; the cluster and the CLI drivers inherit it).
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
ray = pytest.importorskip("ray", reason="the cluster extra (pip install wsvs[cluster]) is not installed")

pytestmark = pytest.mark.slow

SEQUENCES = {"blackswan": "bird", "cows": "cow", "car-shadow": "car", "libby": "dog"}
BIN = Path(sys.executable).parent
TESTS = Path(__file__).resolve().parent


class Cluster:
    """A one-node Ray cluster of its own (own port, temp dir and processes), killed whole and alone at the end:
    `ray stop` would stop every Ray process of this user on the machine."""

    def __init__(self) -> None:
        self.temp_dir = Path(tempfile.mkdtemp(prefix="wsvs-ray-"))  # short: Ray's socket paths must fit 107 bytes
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.address = f"127.0.0.1:{port}"
        self.log = self.temp_dir / "head.log"
        # Workers import the tests' helpers that a task names (the crawl's stand-in scorer) from tests/.
        python_path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": python_path}
        with open(self.log, "w") as log:  # a session of its own: a Ctrl-C of pytest leaves the cluster to kill()
            self.head = subprocess.Popen(
                [BIN / "ray", "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
                 "--num-cpus", "2", "--include-dashboard=false", "--object-store-memory", str(200 * 2**20),
                 "--temp-dir", str(self.temp_dir / "ray"), "--disable-usage-stats"],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + 90
        while "Ray runtime started" not in self.log.read_text():
            assert self.head.poll() is None and time.monotonic() < deadline, self.log.read_text()[-2000:]
            time.sleep(0.2)

    def processes(self) -> dict[int, str]:
        """pid -> command line of every process of the cluster: the head's descendants (workers included,
        which Ray starts in sessions of their own)."""
        parents, commands = {}, {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                pid = int(stat.parent.name)
                parents[pid] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
                commands[pid] = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            except (OSError, IndexError, ValueError):
                continue  # the process ended meanwhile
        found, frontier = {}, [self.head.pid]
        while frontier:
            pid = frontier.pop()
            found[pid] = commands.get(pid, "")
            frontier += [child for child, parent in parents.items() if parent == pid]
        return found

    def kill(self) -> None:
        """SIGKILL to every process of the cluster at once: what a lost machine looks like to the driver."""
        for pid in self.processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.head.wait()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def task_worker(cluster: Cluster, timeout_s: float = 60) -> int:
    """The pid of a Ray worker running a task (Ray titles it ray::<function> while it runs one)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        running = [pid for pid, command in cluster.processes().items() if command.startswith("ray::_call")]
        if running:
            return running[0]
        time.sleep(0.02)
    raise AssertionError("no Ray worker ran a task")


def outputs(out: Path) -> dict[str, object]:
    """Every output file: masks as bytes, JSON records without their timings."""
    files: dict[str, object] = {}
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        if path.suffix == ".json":
            record = read_json(path)
            if isinstance(record, dict):
                record.pop("timings_s", None)
            files[path.relative_to(out).as_posix()] = record
        else:
            files[path.relative_to(out).as_posix()] = path.read_bytes()
    return files


def finished_videos(out: Path) -> list[Path]:
    """The records of the videos done: each is written last, once the video's masks are on disk. Not the
    temporaries of writes in flight (``.run.json.<random>.json`` while run.json is written)."""
    return [path for path in out.glob("*.json")
            if not is_hidden(path) and path.name not in ("run.json", "failures.json")]


def command(videos: Path, out: Path, *extra: str) -> list[str]:
    return ["segment-videos", "--videos", str(videos), "--out", str(out), "--attention", "none", *extra]


def driver(videos: Path, out: Path, address: str) -> subprocess.Popen:
    """`wsvs segment-videos` on the cluster, one task in flight (so that a kill finds videos done and to do)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.Popen([BIN / "wsvs", *command(videos, out, "--executor", "ray", "--address", address)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@pytest.fixture(scope="module")
def videos(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four DAVIS sequences, 12 frames each at 160x90, as <class>/<sequence>.mp4."""
    return write_davis_videos(tmp_path_factory.mktemp("videos"), shared_data, SEQUENCES, 12)


@pytest.fixture(scope="module")
def local_outputs(videos: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    out = tmp_path_factory.mktemp("local") / "out"
    assert main(command(videos, out)) == 0
    files = outputs(out)
    assert len([name for name in files if name.endswith(".png")]) == 4 * 12
    return files


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    cluster = Cluster()
    yield cluster
    ray.shutdown()
    cluster.kill()


def test_ray_tasks_give_the_local_outputs(cluster: Cluster, videos: Path, local_outputs: dict, tmp_path: Path,
                                          capsys) -> None:
    out = tmp_path / "out"
    assert main(command(videos, out, "--executor", "ray", "--address", cluster.address, "--workers", "2")) == 0
    assert "4 videos segmented" in capsys.readouterr().out
    assert outputs(out) == local_outputs


def test_the_crawl_as_ray_tasks_gives_the_local_crawl(cluster: Cluster, shared_data: Path, tmp_path: Path) -> None:
    """Pages on 127.0.0.1; thumbnails, downloads, key-frames and clips in Ray workers, as in this process. A rate
    limit met by a task stops the crawl (the rest cancelled, the work done kept); the rerun finishes it."""
    names = ("realshort", "bikes", "carphone_pristine")
    with LoopbackServer() as server:
        pages = write_pages(tmp_path / "pages.json", {"bird": serve_clips(server, shared_data / "videos", names)})
        local = small_config(tmp_path / "local", pages, workers=1)
        crawl(local, load_brightness_scorer, CLASSES)
        on_ray = small_config(tmp_path / "ray", pages, workers=2)
        executor = ExecutorConfig(kind="ray", workers=2, address=cluster.address)
        server.fail_after(5, RATE_LIMIT)  # the listing (3 pages) and two thumbnails, then HTTP 429
        with pytest.raises(IncompleteError, match=r"^stopped at class 'bird': blocked by the site .*429"):
            crawl(on_ray, load_brightness_scorer, CLASSES, executor)
        assert network_rejections(on_ray.out) == {}
        server.recover()
        summary = crawl(on_ray, load_brightness_scorer, CLASSES, executor)
    assert summary["bird"]["kept"] == 2 and summary["bird"]["rejected"] == 1
    assert manifest_without_times(on_ray.out) == manifest_without_times(local.out)
    clips = sorted(p.relative_to(local.out) for p in (local.out / "clips").rglob("*.mp4"))
    assert clips == sorted(p.relative_to(on_ray.out) for p in (on_ray.out / "clips").rglob("*.mp4"))
    for clip in clips:
        assert (on_ray.out / clip).read_bytes() == (local.out / clip).read_bytes()


def test_a_worker_killed_mid_task_loses_nothing(cluster: Cluster, videos: Path, local_outputs: dict,
                                                tmp_path: Path) -> None:
    out = tmp_path / "out"
    run = driver(videos, out, cluster.address)
    os.kill(task_worker(cluster), signal.SIGKILL)
    stdout, stderr = run.communicate(timeout=120)
    # Without Ray's retry the driver would get the worker's crash and fail.
    assert run.returncode == 0, stderr[-2000:]
    assert "4 videos segmented, 0 already done" in stdout
    assert outputs(out) == local_outputs


def test_a_rerun_finishes_what_a_dead_cluster_left(videos: Path, local_outputs: dict, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = Cluster()
    run = driver(videos, out, first.address)
    deadline = time.monotonic() + 120
    while not finished_videos(out):
        assert run.poll() is None and time.monotonic() < deadline, "the first run ended before the kill"
        time.sleep(0.02)
    first.kill()  # head, raylet and workers, mid-run
    run.kill()  # the driver's machine went with it
    run.wait()
    done = len(finished_videos(out))
    assert 1 <= done < len(SEQUENCES)

    second = Cluster()
    try:
        rerun = driver(videos, out, second.address)
        stdout, stderr = rerun.communicate(timeout=120)
    finally:
        second.kill()
    assert rerun.returncode == 0, stderr[-2000:]
    assert f"{len(SEQUENCES) - done} videos segmented, {done} already done" in stdout
    assert outputs(out) == local_outputs
    assert json.loads((out / "failures.json").read_text()) == {}


def test_the_documented_cluster_yaml_is_valid() -> None:
    """benchmarks/ray-cluster.yaml as `ray up` reads it: Ray's own schema and defaults for on-premise clusters."""
    import yaml
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(yaml.safe_load((TESTS.parent / "benchmarks" / "ray-cluster.yaml").read_text()))
    validate_config(config)
    assert config["available_node_types"]["local.cluster.node"]["max_workers"] == 3
    assert all("wsvs[train,cluster]" in command for command in config["setup_commands"])
