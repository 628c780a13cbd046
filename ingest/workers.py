"""Many ingest workers on one shared warehouse: the prompt split, and N local worker processes.

`--shard I/N` keeps every N-th prompt, starting at the I-th (1-based), counting the command's prompts and
prompt-file lines in order (blank lines are not prompts): the split depends on nothing but the input, so
any shard can be rerun alone, on any machine. `--workers N` runs N such processes here, one per GPU when
torch sees GPUs (CUDA_VISIBLE_DEVICES per worker), and shows the prompts they have committed as one bar.
The workers share nothing but the warehouse: each commits on its own (warehouse/concurrency.py).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ingest.errors import DeviceError
from warehouse import db

T = TypeVar("T")
POLL_SECONDS = 1.0


class WorkerFailed(db.WarehouseError):
    """A worker process ended with an error: the line names it and how to rerun it alone."""


def parse_shard(text: str) -> tuple[int, int]:
    """`I/N` (1 <= I <= N) as (I, N); ValueError with the accepted form otherwise."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not 1 <= int(match.group(1)) <= int(match.group(2)):
        raise ValueError(f"{text!r} is not a shard: give I/N with 1 <= I <= N, e.g. 2/4")
    return int(match.group(1)), int(match.group(2))


def take_shard(items: Iterable[T], index: int, count: int) -> Iterator[T]:
    """The items of shard `index` of `count` (1-based): the index-th, then every count-th after it."""
    for position, item in enumerate(items):
        if position % count == index - 1:
            yield item


@dataclass
class _Worker:
    shard: str
    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    def lines(self, path: Path) -> list[str]:
        return [line for line in path.read_text(errors="replace").splitlines() if line.strip()]

    def error(self) -> str:
        lines = self.lines(self.stderr)
        errors = [line for line in lines if line.startswith("error:")]
        found = (errors or lines or [f"exit status {self.process.returncode}"])[-1]
        return found.removeprefix("error: ")


def gpu_slots() -> list[str] | None:
    """The GPUs workers are spread over (as CUDA_VISIBLE_DEVICES values), or None when torch sees none."""
    import torch

    count = torch.cuda.device_count()
    if count == 0:
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = [name.strip() for name in visible.split(",")] if visible else [str(i) for i in range(count)]
    return names[:count]


def run_workers(
    count: int, command: list[str], db_path: str, data_path: str | None, total: int, device: str, progress: bool
) -> tuple[list[str], list[str], int]:
    """Run `command` (an ingest command line without --shard) as `count` local workers, shard i/count each,
    until all end; the warehouse is created first (at `data_path`) when it is new. Returns each worker's
    summary line, every warning line they wrote, and the exit status
    to give (3 when a worker skipped prompts). Raises WorkerFailed naming the first failed worker, after
    the others have finished (what they committed is kept), and DeviceError for --device cuda without GPUs.
    """
    slots = gpu_slots() if device != "cpu" else None
    if device == "cuda" and slots is None:
        raise DeviceError("--device cuda was asked for but torch sees no CUDA GPU: use --device cpu or auto")
    db.connect(db_path, data_path=data_path).close()  # create it here once, not in N workers at once
    before = _committed(db_path)
    workers: list[_Worker] = []
    with tempfile.TemporaryDirectory(prefix="actwh-workers-") as tmp:
        try:
            for i in range(1, count + 1):
                env = dict(os.environ)
                if slots is not None:
                    env["CUDA_VISIBLE_DEVICES"] = slots[(i - 1) % len(slots)]
                out, err = Path(tmp) / f"{i}.out", Path(tmp) / f"{i}.err"
                with open(out, "wb") as stdout, open(err, "wb") as stderr:
                    process = subprocess.Popen(
                        [*command, "--shard", f"{i}/{count}", "--quiet"], stdout=stdout, stderr=stderr, env=env
                    )
                workers.append(_Worker(f"{i}/{count}", process, out, err))
            _follow(workers, db_path, before, total, progress)
        except BaseException:
            for worker in workers:  # Ctrl-C: stop the workers as SIGTERM does (runs marked interrupted)
                if worker.process.poll() is None:
                    worker.process.terminate()
            for worker in workers:
                worker.process.wait()
            raise
        failed = [w for w in workers if w.process.returncode not in (0, 3)]
        if failed:
            first = failed[0]
            raise WorkerFailed(
                f"{len(failed)} of {count} workers failed; worker {first.shard}: {first.error()} "
                f"(the others' prompts are committed: rerun it alone with --shard {first.shard})"
            )
        summaries = [f"worker {w.shard}: {line}" for w in workers for line in w.lines(w.stdout)]
        warnings = [line for w in workers for line in w.lines(w.stderr) if line.startswith("warning:")]
        status = 3 if any(w.process.returncode == 3 for w in workers) else 0
    return summaries, warnings, status


def _follow(workers: list[_Worker], db_path: str, before: int, total: int, progress: bool) -> None:
    """Wait for every worker, showing the prompts committed since they started as one bar."""
    from tqdm import tqdm

    with tqdm(total=total, unit="prompt", desc="ingest", leave=False, disable=not progress) as bar:
        while any(w.process.poll() is None for w in workers):
            time.sleep(POLL_SECONDS)
            if progress:
                bar.n = max(0, _committed(db_path) - before)
                bar.refresh()


def _committed(db_path: str) -> int:
    """Prompts committed to the warehouse (0 before it exists)."""
    try:
        con = db.connect(db_path, read_only=True)
    except db.NotAWarehouse:
        return 0
    try:
        return int(con.execute("SELECT count(*) FROM prompts").fetchall()[0][0])
    finally:
        con.close()
