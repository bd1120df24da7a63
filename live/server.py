"""Start and stop a real ``transformers serve`` process on a loopback port.

Used by the tests and by anyone who wants the live loop on a laptop. The server is a
child process in its own process group, optionally pinned to CPU cores (so that two
instances, agent and memory, do not share a core: the simulator models them as
independent machines), with one torch thread per pinned core.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from calibration.errors import ComemInputError
from live.openai_stream import Endpoint


def serve_available() -> str | None:
    """None if ``transformers serve`` can run here, else the reason it cannot."""
    try:
        import fastapi  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        return f"the 'serve' extra is not installed ({exc.name} missing): pip install -e '.[serve]'"
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class ServerSettings:
    """What the server is started with; the simulator's engine config mirrors these."""

    model_dir: str
    cpus: tuple[int, ...] | None = None  # pin to these cores (None: no pinning)
    max_batch_tokens: int = 2048
    num_blocks: int = 4096
    block_size: int = 32
    startup_timeout_s: float = 180.0


class ServerProcess:
    """A running server; ``stop()`` (or leaving the context) kills its process group."""

    def __init__(self, settings: ServerSettings, log_path: Path, port: int | None = None) -> None:
        self.settings = settings
        self.port = port or free_port()
        self.endpoint = Endpoint("127.0.0.1", self.port)
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        s = self.settings
        exe = shutil.which("transformers", path=str(Path(sys.executable).parent)) or shutil.which(
            "transformers"
        )
        if exe is None:
            raise ComemInputError("the 'transformers' command is not installed (serve extra)")
        return [
            exe,
            "serve",
            s.model_dir,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--device",
            "cpu",
            "--continuous-batching",
            "--cb-max-batch-tokens",
            str(s.max_batch_tokens),
            "--cb-num-blocks",
            str(s.num_blocks),
            "--cb-block-size",
            str(s.block_size),
            "--default-seed",
            "0",
            "--log-level",
            "warning",
        ]

    def start(self) -> ServerProcess:
        env = dict(
            os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false"
        )
        cpus = self.settings.cpus
        if cpus:
            threads = str(len(cpus))
            env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)

        def pin() -> None:  # runs in the child, before exec
            os.setsid()
            # die with the comem process, even if it is killed (SIGKILL, a timeout's
            # SIGTERM) before it can stop us: Linux's parent-death signal
            with contextlib.suppress(Exception):
                import ctypes

                ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
            if cpus and hasattr(os, "sched_setaffinity"):
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(0, set(cpus))

        cmd = self.command()
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=pin
            )
        self._wait_healthy()
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.settings.startup_timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-1500:]
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{tail}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                status, _ = self.endpoint.get("/health", timeout_s=2.0)
                if status == 200:
                    return
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"server not healthy within {self.settings.startup_timeout_s} s")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def __enter__(self) -> ServerProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def serving(
    settings: ServerSettings, log_dir: Path, names: Sequence[str] = ("agent",)
) -> Iterator[list[ServerProcess]]:
    """Start one server per name (pinned to successive cores when ``settings.cpus`` is
    None and the machine has enough of them); stop them all on exit."""
    servers: list[ServerProcess] = []
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    try:
        for i, name in enumerate(names):
            own = settings
            if settings.cpus is None and len(cores) >= len(names):
                own = ServerSettings(**{**settings.__dict__, "cpus": (cores[i],)})
            server = ServerProcess(own, log_dir / f"server-{name}.log")
            servers.append(server)  # listed before it starts: stopped even if start fails
            server.start()
        yield servers
    finally:
        for s in servers:
            s.stop()
