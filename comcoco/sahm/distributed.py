"""Devices and processes of a SAHM run: device choice, loader workers, barriers, and the ``--nproc`` launcher.

``launch(fn, args, nproc)`` is what ``torchrun --standalone --nproc_per_node=N`` does, from Python: the
elastic agent starts N processes with ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` and a rendezvous address set,
each calls ``fn(*args)``, and rank 0's result comes back. If one process fails the agent stops the others
(no rank is left waiting at a barrier) and the first failing rank's message is raised as one line.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import tempfile
import threading
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from comcoco.sahm.runfiles import RunError, Runtime

DEVICES = ("auto", "cpu", "cuda")
_DEVICE_FORM = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_device_form(name: str) -> str:
    """``name`` if it is of a form ``--device`` takes (auto, cpu, cuda, cuda:N), else RunError; whether
    that device exists here is :func:`resolve_device`'s question."""
    if not _DEVICE_FORM.fullmatch(name):
        raise RunError(f"--device must be one of {', '.join(DEVICES)} (or cuda:N), got {name!r}")
    return name


def resolve_device(name: str) -> torch.device:
    """``auto``: the local CUDA device when present, else CPU; ``cuda`` is ``cuda:LOCAL_RANK``.

    A CUDA device that does not exist (no GPU, or an index beyond the count) is refused in one line.
    """
    check_device_form(name)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if name == "auto":
        return torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    # cuda or cuda:N (the form was checked)
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise RunError(f"--device {name}: no CUDA device is available on this machine (use --device cpu or auto)")
    dev = torch.device(name) if ":" in name else torch.device("cuda", local)
    if dev.index is not None and dev.index >= count:
        raise RunError(f"--device {name}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return dev


SMALL_INPUT = 128  # inputs up to this side run on one CPU thread (see ``set_cpu_threads``)


@contextmanager
def cpu_threads(runtime: Runtime, device: torch.device | str, image_size: int) -> Iterator[int]:
    """Torch's CPU threads while a run trains or evaluates (restored after): ``runtime.threads``, else one
    thread for inputs up to ``SMALL_INPUT``² and the process's setting otherwise (``OMP_NUM_THREADS``
    when set, else one per core).

    The tiny model's operators are small (64² at batch 4: tens of thousands of elements each, about 15,000
    per step), so splitting each over threads costs more in synchronisation than it gains: on two shared
    cores a tiny step took 9.0 s with two threads against 0.68 s with one (benchmarks/sahm.py prints the
    ratio). Two threads pay off at 480², where each convolution is large.
    """
    before = torch.get_num_threads()
    if runtime.threads is not None:
        if runtime.threads < 1:
            raise RunError(f"--threads must be >= 1, got {runtime.threads}")
        torch.set_num_threads(runtime.threads)
    elif torch.device(device).type == "cpu" and image_size <= SMALL_INPUT and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)
    try:
        yield torch.get_num_threads()
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def resolve_workers(runtime: Runtime, device: torch.device) -> int:
    if runtime.num_workers is not None:
        if runtime.num_workers < 0:
            raise RunError(f"--workers must be >= 0, got {runtime.num_workers}")
        return runtime.num_workers
    return min(4, os.cpu_count() or 1) if device.type == "cuda" else 0


def barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def check_nproc(nproc: int, device: str) -> None:
    """Refuse an ``--nproc`` that cannot run: nested in torchrun, more processes than GPUs, one GPU for all."""
    if nproc < 1:
        raise RunError(f"--nproc must be >= 1, got {nproc}")
    if nproc == 1:
        return
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise RunError(f"--nproc {nproc}: already running under torchrun (WORLD_SIZE={os.environ['WORLD_SIZE']})")
    if device.startswith("cuda:"):
        raise RunError(f"--nproc {nproc} with --device {device}: each process takes cuda:LOCAL_RANK; use --device cuda")
    cuda = device in ("auto", "cuda") and torch.cuda.is_available()
    if device == "cuda" and not cuda:
        raise RunError(f"--device {device}: no CUDA device is available on this machine (use --device cpu or auto)")
    if cuda and nproc > torch.cuda.device_count():
        raise RunError(f"--nproc {nproc}: this machine has {torch.cuda.device_count()} CUDA device(s)")


def launch(fn: Callable[..., Any], args: tuple, nproc: int, expected: tuple[type[BaseException], ...] = ()) -> Any:
    """Run ``fn(*args)`` in ``nproc`` processes on this machine (torchrun's agent); returns rank 0's result.

    ``fn`` must be importable by name (the processes are spawned). Exceptions of the ``expected`` types
    become ``RunError`` with their message; others name their type and print their traceback.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    with tempfile.TemporaryDirectory(prefix="comcoco-launch-") as tmp:
        config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=uuid.uuid4().hex,
                              rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
                              monitor_interval=0.2, start_method="spawn")
        quiet = [logging.getLogger(n) for n in ("torch.distributed.elastic", "torch.multiprocessing")]
        levels = [q.level for q in quiet]
        for q in quiet:
            q.setLevel(logging.CRITICAL)  # a failure is reported below, in one line
        handlers = _signal_handlers()  # the agent installs its own; the caller gets its back
        try:
            results = elastic_launch(config, _worker)(fn, args, nproc, tmp, expected)
        except ChildFailedError as exc:
            messages = sorted(Path(tmp).glob("rank-*.txt"), key=lambda p: int(p.stem.split("-")[1]))
            if messages:
                raise RunError(messages[0].read_text().strip()) from None
            rank, failure = min(exc.failures.items())
            raise RunError(f"process {rank} of {nproc} failed (exit code {failure.exitcode})") from None
        finally:
            for q, level in zip(quiet, levels, strict=True):
                q.setLevel(level)
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
    return results[0]


def _signal_handlers() -> dict[signal.Signals, Any]:
    if threading.current_thread() is not threading.main_thread():
        return {}
    sigs = [signal.SIGTERM, signal.SIGINT] + [getattr(signal, n) for n in ("SIGHUP", "SIGQUIT") if hasattr(signal, n)]
    return {s: signal.getsignal(s) for s in sigs}


def _worker(fn: Callable[..., Any], args: tuple, nproc: int, tmp: str,
            expected: tuple[type[BaseException], ...]) -> Any:
    """One launched process: CPU threads shared out as torchrun does, errors written for the launcher."""
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // nproc))
    try:
        return fn(*args)
    except expected as exc:
        message = str(exc)
    except Exception as exc:
        traceback.print_exc()
        message = f"{type(exc).__name__}: {exc}"
    rank = os.environ.get("RANK", "0")
    Path(tmp, f"rank-{rank}.txt").write_text(f"rank {rank}: {message}\n" if nproc > 1 else message)
    raise SystemExit(2)
