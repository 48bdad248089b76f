"""The practice app scaled out, for tests/test_team_scale.py and benchmarks/team_load.py: a throwaway PostgreSQL
cluster, `calltune serve` processes sharing it and one model endpoint (the loopback Vertex fake), and simulated
sellers holding practice calls through the real HTTP API."""
from __future__ import annotations

import getpass
import glob
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from fakes.vertex import FakeVertex

ENDPOINT = "projects/calltune-test/locations/us-central1/endpoints/{}"


# ---- PostgreSQL: Debian's server in a temporary folder, run as a non-root user ----
class PostgresMissing(Exception):
    """No server here (or, under root, no user to run it as): the reason."""


class Postgres:
    """A running cluster reached by its unix socket in `socket_dir`, as `user` (trust authentication: the socket
    lives in a folder only this machine's users reach)."""

    def __init__(self, socket_dir: Path, user: str):
        self.socket_dir, self.user, self._n = socket_dir, user, 0

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@/{database}?host={self.socket_dir}"

    def new_database(self) -> str:
        """A new empty database; its URL (postgresql://: the driver is calltune's choice)."""
        self._n += 1
        name = f"t{os.getpid()}_{self._n}"
        self.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def execute(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(host=str(self.socket_dir), user=self.user, dbname="postgres", autocommit=True) as conn:
            conn.execute(sql)


@contextmanager
def postgres_cluster() -> Iterator[Postgres]:
    """initdb and pg_ctl from /usr/lib/postgresql/*/bin in a temporary folder. initdb refuses root: under root (CI)
    the server runs as the `postgres` system user the package creates (runuser). PostgresMissing when it cannot."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise PostgresMissing("no PostgreSQL server (apt-get install postgresql)")
    bin_dir = Path(found[-1]).parent
    if os.geteuid() == 0:
        import pwd

        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            raise PostgresMissing("running as root and there is no `postgres` user to run the server as") from None
        user, run_as = "postgres", ["runuser", "-u", "postgres", "--"]
    else:
        user, run_as = getpass.getuser(), []
    folder = Path(tempfile.mkdtemp(prefix="calltune-pg-"))  # short: a unix socket path has ~100 characters at most
    if run_as:
        os.chown(folder, account.pw_uid, account.pw_gid)
    data, log = folder / "data", folder / "server.log"
    options = (f"-k {folder} -c listen_addresses='' -c fsync=off -c synchronous_commit=off -c full_page_writes=off "
               f"-c max_connections=300 -c timezone=UTC")
    try:
        subprocess.run([*run_as, bin_dir / "initdb", "-D", data, "-U", user, "-A", "trust", "-E", "UTF8",
                        "--no-sync"], check=True, capture_output=True)
        subprocess.run([*run_as, bin_dir / "pg_ctl", "-D", data, "-o", options, "-l", log, "-w", "start"],
                       check=True, capture_output=True)
    except subprocess.CalledProcessError as exc:
        shown = exc.stderr.decode(errors="replace")[-2000:] + (log.read_text(errors="replace")[-2000:]
                                                                if log.exists() else "")
        shutil.rmtree(folder, ignore_errors=True)
        raise RuntimeError(f"PostgreSQL did not start: {shown}") from None
    try:
        yield Postgres(folder, user)
    finally:
        subprocess.run([*run_as, bin_dir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


# ---- the model endpoint ----
class TimedVertex(FakeVertex):
    """The loopback Vertex fake, answering each request after `delay_s` (the model's time) and recording how long it
    took by the text it answered (each seller line is unique: the app's overhead is a request's time less this)."""

    def __init__(self, delay_s: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self._server.socket.listen(4096)  # many instances' clients connecting at once are queued, not refused
        self.delay_s = delay_s
        self.model_s: dict[str, float] = {}

    def generate_content(self, match, body: dict) -> dict:
        started = time.perf_counter()
        if self.delay_s:
            time.sleep(self.delay_s)
        answer = super().generate_content(match, body)
        self.model_s[body["contents"][-1]["parts"][-1]["text"]] = time.perf_counter() - started
        return answer


# ---- `calltune serve` processes ----
@dataclass
class Instance:
    process: subprocess.Popen
    url: str
    log: list[str] = field(default_factory=list)


def start_instances(n: int, state: Path, database_url: str, model_url: str, refresh_s: float = 0.2,
                    timeout_s: float = 300) -> list[Instance]:
    """`n` `calltune serve` processes on free loopback ports, started together (they migrate the schema once),
    sharing `state` (its registry names the model) and the database; returned once each says where it listens."""
    command = [sys.executable, "-m", "calltune.cli", "serve", "--port", "0", "--refresh-s", str(refresh_s),
               "--vertex-base-url", model_url, f"state_dir={state}", f"serve.database_url={database_url}",
               "serve.max_queue=4096"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "CALLTUNE_API_KEY": ""}
    started = [subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
               for _ in range(n)]
    instances, lines = [], queue.Queue()
    for i, process in enumerate(started):
        instance = Instance(process, "")
        instances.append(instance)

        def read(process=process, instance=instance, i=i) -> None:
            for line in process.stderr:
                instance.log.append(line)
                lines.put((i, line))
            lines.put((i, None))

        threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + timeout_s
    try:
        while not all(inst.url for inst in instances):
            i, line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            if line is None:
                raise RuntimeError(f"calltune serve #{i} exited: {''.join(instances[i].log)[-3000:]}")
            found = re.search(r" at (http://127\.0\.0\.1:\d+)/v1 ", line)
            if found:
                instances[i].url = found[1]
    except BaseException:
        stop_instances(instances)
        raise
    return instances


def stop_instances(instances: list[Instance]) -> None:
    for inst in instances:
        inst.process.terminate()
    for inst in instances:
        try:
            inst.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            inst.process.kill()
            inst.process.wait()


def wait_for_version(urls: list[str], version: int, timeout_s: float = 60) -> None:
    """Until every instance's /health names `version` (each checks the secret every serve.refresh_s)."""
    deadline = time.monotonic() + timeout_s
    waiting = list(urls)
    while waiting:
        waiting = [u for u in waiting if httpx.get(f"{u}/health", timeout=30).json().get("version") != version]
        if waiting and time.monotonic() > deadline:
            raise TimeoutError(f"{waiting} never served version {version}")
        time.sleep(0.05)


# ---- sellers ----
@dataclass
class Timings:
    chat_s: list[float] = field(default_factory=list)      # each reply, as the seller waited for it
    overhead_s: list[float] = field(default_factory=list)  # each reply less the model's time at the endpoint
    review_s: list[float] = field(default_factory=list)    # each finished call's review, filed
    failures: list[str] = field(default_factory=list)


def practise(urls: list[str], sellers: dict[str, str], calls_each: int, turns: int, model: TimedVertex,
             start: threading.Barrier | None = None) -> Timings:
    """Every seller (name -> key) holds `calls_each` calls of `turns` lines at once, each request going to the next
    instance in turn (as a load balancer spreads them), then files the call and its review, and files it once more
    (the page's retry after a lost answer)."""
    timings, lock = Timings(), threading.Lock()
    start = start or threading.Barrier(len(sellers))

    def seller(name: str, key: str, n: int) -> None:
        turn = n
        with ExitStack() as stack:
            clients = [stack.enter_context(httpx.Client(base_url=u, headers={"Authorization": f"Bearer {key}"},
                                                        timeout=120)) for u in urls]

            def client() -> httpx.Client:
                nonlocal turn
                turn += 1
                return clients[turn % len(clients)]

            start.wait()
            for c in range(calls_each):
                call_id, messages = f"{name}-call-{c}", [{"role": "system", "content": "You are Ana."}]
                spoken = []
                for t in range(turns):
                    line = f"{name} says line {t} of call {c}: do you have a minute?"
                    messages.append({"role": "user", "content": line})
                    began = time.perf_counter()
                    r = client().post("/v1/chat/completions", json={"model": "llm-endpoint", "messages": messages})
                    took = time.perf_counter() - began
                    if r.status_code != 200:
                        with lock:
                            timings.failures.append(f"chat {r.status_code}: {r.text[:200]}")
                        return
                    text = r.json()["choices"][0]["message"]["content"]
                    messages.append({"role": "assistant", "content": text})
                    spoken += [{"role": "seller", "text": line}, {"role": "customer", "text": text}]
                    with lock:
                        timings.chat_s.append(took)
                        timings.overhead_s.append(took - model.model_s.get(line, 0.0))
                body = {"call_id": call_id, "system": "You are Ana.", "persona": {}, "turns": spoken}
                for _ in range(2):  # filed, then the page's retry: stored once
                    began = time.perf_counter()
                    r = client().post("/practice/api/calls", json=body)
                    with lock:
                        if r.status_code != 200 or not r.json()["stored"]:
                            timings.failures.append(f"review {r.status_code}: {r.text[:200]}")
                        timings.review_s.append(time.perf_counter() - began)

    threads = [threading.Thread(target=seller, args=(name, key, i)) for i, (name, key) in enumerate(sellers.items())]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return timings


def publish(state: Path, endpoint: str) -> int:
    """A new version of the served secret, naming `endpoint` (a promotion)."""
    from calltune.backends.registry import open_registry
    from calltune.config import DeployConfig

    with closing(open_registry(DeployConfig(), state)) as registry:
        return registry.add_version(DeployConfig().secret_id, endpoint.encode()).version
