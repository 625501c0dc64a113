"""The processes a test session starts: found by a marker in their environment, diagnosed, cleaned up.

Every process the suite starts inherits ``EAT_TEST_RUN=<this session's id>`` (set in conftest.py), so a
process that escaped its parent (an orphaned loader worker, a rank whose launcher died) is still found,
whatever its parent or process group. Used three ways:

* :func:`wait_until` polls a condition of a running subprocess; when the deadline passes it prints the
  Python stacks of every process of that run (``py-spy dump``, else gdb, else the kernel's wait channel)
  and kills them all, workers included, before failing — a hang is diagnosed, never left behind.
* :func:`finish` waits for a process group and kills it whatever happens.
* conftest.py checks after every test that the test left no process alive (:func:`leftovers`).

Deadlines here only decide how long a *hang* takes to be reported: they are many times a run's idle time,
so load on the machine never turns a working run into a failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

MARK = "EAT_TEST_RUN"
DEADLINE_S = 1800.0  # hang detection, not a speed check: 10x the slowest subprocess (the quick demo, ~3 min idle)


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def _ppid(pid: int) -> int:
    stat = _read(f"/proc/{pid}/stat").decode(errors="replace")
    try:
        return int(stat.rsplit(")", 1)[1].split()[1])
    except (IndexError, ValueError):
        return 0


def alive(pid: int) -> bool:
    return _state(pid) not in ("Z", "X", "")


def _state(pid: int) -> str:
    stat = _read(f"/proc/{pid}/stat").decode(errors="replace")
    parts = stat.rsplit(")", 1)
    return parts[1].split()[0] if len(parts) == 2 and parts[1].split() else ""


def cmdline(pid: int) -> str:
    return _read(f"/proc/{pid}/cmdline").replace(b"\0", b" ").decode(errors="replace").strip()


def marked(mark: str | None = None) -> list[int]:
    """Live (non-zombie) processes whose environment carries this session's marker, this process excluded."""
    mark = mark or os.environ[MARK]
    needle = f"{MARK}={mark}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        if needle in _read(f"/proc/{entry}/environ").split(b"\0") and _state(int(entry)) not in ("Z", "X", ""):
            found.append(int(entry))
    return sorted(found)


def descendants(root: int, pids: Iterable[int]) -> set[int]:
    """The members of ``pids`` whose chain of parents reaches ``root``."""
    parent = {p: _ppid(p) for p in pids}
    out = set()
    for p in parent:
        q, seen = p, set()
        while q > 1 and q not in seen:
            seen.add(q)
            q = parent.get(q, _ppid(q))
            if q == root:
                out.add(p)
                break
    return out


def own_helpers() -> set[int]:
    """Marked processes that legitimately outlive a test: the fork server and resource tracker of *this*
    process (started by an in-process DataLoader with workers), and the workers they serve."""
    pids = marked()
    roots = {p for p in pids if _ppid(p) == os.getpid()
             and ("multiprocessing.forkserver" in cmdline(p) or "multiprocessing.resource_tracker" in cmdline(p))}
    return roots | {p for r in roots for p in descendants(r, pids)}


def leftovers() -> list[int]:
    return sorted(set(marked()) - own_helpers())


def stacks(pids: Iterable[int]) -> str:
    """A readable dump of what each process is doing: its command line, then its stacks."""
    local = Path(sys.executable).with_name("py-spy")  # the venv's, when the suite runs without activating it
    pyspy = str(local) if local.exists() else shutil.which("py-spy")
    gdb = shutil.which("gdb")
    out = []
    for pid in pids:
        text = f"--- pid {pid} (parent {_ppid(pid)}, state {_state(pid)}): {cmdline(pid)[:300]}\n"
        dump = ""
        try:
            for _ in range(3 if pyspy else 0):  # py-spy can miss a consistent snapshot now and then: retry
                done = subprocess.run([pyspy, "dump", "--pid", str(pid)], capture_output=True, text=True,
                                      timeout=60)
                dump = done.stdout if "Thread" in done.stdout else dump + done.stderr
                if "Thread" in done.stdout:
                    break
            if not dump.strip() and gdb:
                dump = subprocess.run([gdb, "-p", str(pid), "-batch", "-ex", "thread apply all bt"],
                                      capture_output=True, text=True, timeout=60).stdout[-4000:]
        except (OSError, subprocess.SubprocessError) as e:
            dump = f"(no stack: {e})"
        if not dump.strip():
            dump = f"(no stack; kernel wait channel: {_read(f'/proc/{pid}/wchan').decode(errors='replace')})"
        out.append(text + dump)
    return "\n".join(out)


def kill(pids: Iterable[int]) -> None:
    """SIGKILL each process and its process group (workers share their rank's group), never the suite's."""
    own = os.getpgid(0)
    for pid in pids:
        try:
            group = os.getpgid(pid)
            if group != own:
                os.killpg(group, signal.SIGKILL)
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_of(procs: Iterable[subprocess.Popen]) -> list[int]:
    """Every live marked process that belongs to these subprocesses: themselves, their descendants, and
    members of their process groups (orphaned workers stay in their rank's group)."""
    procs = list(procs)
    pids = marked()
    groups = set()
    for p in procs:
        try:
            groups.add(os.getpgid(p.pid))
        except ProcessLookupError:
            pass
    groups.discard(os.getpgid(0))
    mine = {p.pid for p in procs if p.poll() is None}
    for p in procs:
        mine |= descendants(p.pid, pids)
    for pid in pids:
        try:
            if os.getpgid(pid) in groups:
                mine.add(pid)
        except ProcessLookupError:
            pass
    return sorted(mine)


def fail_run(procs: Iterable[subprocess.Popen], what: str, extra: Iterable[int] = ()) -> None:
    """Dump the stacks of every process of the run (and of ``extra`` pids), kill them all, and fail the test
    naming ``what``."""
    procs = list(procs)
    pids = sorted(set(run_of(procs)) | {p for p in extra if _state(p) not in ("Z", "X", "")})
    report = stacks(pids) if pids else "(no process of the run is alive)"
    kill(pids)
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()
    raise AssertionError(f"{what}\nstacks of the run's {len(pids)} process(es):\n{report}")


def wait_until(condition: Callable[[], bool], procs: Iterable[subprocess.Popen], what: str,
               timeout: float = DEADLINE_S, ended: Callable[[subprocess.Popen], str] | None = None,
               extra: Iterable[int] = ()) -> None:
    """Poll ``condition`` until true; fail early if a process of ``procs`` ended first (``ended`` formats
    the failure, default its status); at ``timeout`` dump stacks and kill the run and ``extra`` pids
    (:func:`fail_run`)."""
    procs = list(procs)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"{what}: a process ended first (status {p.returncode}) "
                                     f"{ended(p) if ended else ''}")
        time.sleep(0.05)
    fail_run(procs, f"{what}: not within {timeout:.0f} s", extra)


def finish(procs: Iterable[subprocess.Popen], timeout: float = DEADLINE_S) -> list[str]:
    """Wait for each process and collect its output; on the deadline, dump stacks and kill the run."""
    procs = list(procs)
    outs = []
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            out, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            fail_run(procs, f"{p.args!r}: still running after {timeout:.0f} s")
        outs.append(out or "")
    return outs


def run(cmd: list[str], *, capture_output: bool = False, check: bool = False, input: str | None = None,
        timeout: float | None = None, **popen: object) -> subprocess.CompletedProcess:
    """:func:`subprocess.run` for tests: the command runs in a process group of its own, and one that has not
    ended by the hang deadline has the stacks of all its processes printed and is killed whole (a plain
    ``subprocess.run`` timeout kills only the direct child and says nothing of where it hung). ``timeout`` is
    accepted for call compatibility; only the hang deadline applies (a slow machine is not a failure)."""
    if capture_output:
        popen.setdefault("stdout", subprocess.PIPE)
        popen.setdefault("stderr", subprocess.PIPE)
    if input is not None:
        popen.setdefault("stdin", subprocess.PIPE)
    popen.setdefault("start_new_session", True)
    proc = subprocess.Popen(cmd, **popen)
    try:
        out, err = proc.communicate(input, timeout=max(timeout or 0.0, DEADLINE_S))
    except subprocess.TimeoutExpired:
        fail_run([proc], f"{cmd!r}: still running after {DEADLINE_S:.0f} s")
    finally:
        kill(run_of([proc]))  # whatever the command left running in its group
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    if check:
        done.check_returncode()
    return done
