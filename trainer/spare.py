"""A warm spare rank: a process that has already paid for its imports, waiting to become a rank of a launch.

Most of a restart of the tiny run is Python importing: torch, DeepSpeed and our modules (3 s per rank on a
loaded 2-core box), then, inside ``deepspeed.initialize``, TorchDynamo and Inductor (DeepSpeed's Muon
optimizer calls ``torch.compile`` at import; a torch ref under a device context imports Dynamo): 2.8 of the
4.6 s of the engine phase. A spare does all of that before the fault, so a relaunch pays only for what
depends on the launch (the rendezvous, the model, the checkpoint). ``launcher.ranks`` keeps a pool of them.

The protocol, one JSON line on stdin (the pool writes it; a cold start writes it at once, so one code path
serves both):

    {"env": {...}, "argv": ["--run-dir", RUN, ...], "pgid": 1234 | null, "handed": unix time}

``env`` replaces the environment (the rank's RANK, WORLD_SIZE, MASTER_PORT, lifeline, launch id...),
``pgid`` is the process group to join (the launch's first rank: the whole launch is signalled as one group;
null for that first rank, which already leads its own), ``handed`` is when the launcher handed the rank over
(its start-up is measured from there). End of file on stdin (the pool, or its process, is gone) ends an idle
spare at once.

The imports run in a thread at the lowest CPU priority (nice 19 and SCHED_IDLE; on Linux both are per thread): a
spare warming up beside a training launch takes only idle CPU, and the main thread, which becomes the rank, keeps
the priority it was started with, with no privilege needed to get it back (the threads the rank creates are its
own; the one helper thread an import leaves behind stays idle).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import threading
import time

PRELOAD = (
    "torch",
    "deepspeed",
    "deepspeed.comm",
    "trainer.train",
    "deepspeed.runtime.pipe.engine",
    "deepspeed.runtime.zero.muon.muon_optimizer",  # torch.compile at import: Dynamo and Inductor
    "deepspeed.runtime.bf16_optimizer",
    "deepspeed.runtime.zero.stage_1_and_2",
    "deepspeed.checkpoint",
    "torch._dynamo",
    "torch._inductor.compile_fx",
    "deepspeed.module_inject.auto_ep_config",  # the engine's expert-parallel checks (milliseconds, but lazily)
    "deepspeed.module_inject.auto_ep_layer",
    "deepspeed.comm.mori",
)
"""What a rank imports before its first step, heaviest first (``tests/unit/test_spare.py`` checks that building
an engine after it imports nothing of torch's compiler or of DeepSpeed)."""
IDLE_NICE = 19


def preload(modules=PRELOAD) -> list[str]:
    """Import ``modules``; returns the ones that failed (the rank imports them again, and fails there if it must)."""
    failed = []
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a spare never dies of a preload; the rank reports the real error
            failed.append(name)
    return failed


def lower_this_thread(nice: int) -> None:
    """This thread (not the process) at ``nice`` and, when ``nice`` is the idle priority, under SCHED_IDLE: any
    runnable rank thread preempts it at once (nice 19 alone still cost a 2-core CPU run a third of its
    throughput while four spares warmed). Best effort: where neither is allowed the thread runs as it is."""
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, nice)
    except (OSError, AttributeError):
        pass
    if nice >= IDLE_NICE and hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        except OSError:
            pass


def preload_in_background(modules=PRELOAD, nice: int = IDLE_NICE, ready_fd: int | None = None) -> threading.Thread:
    """Start :func:`preload` in a thread of its own at ``nice`` (this thread's priority, not the process's);
    when it is done, one byte on ``ready_fd`` tells the pool this spare is warm."""
    def work():
        lower_this_thread(nice)
        preload(modules)
        if ready_fd is not None:
            try:
                os.write(ready_fd, b"w")
                os.close(ready_fd)
            except OSError:
                pass
    thread = threading.Thread(target=work, name="bigops-spare-preload", daemon=True)
    thread.start()
    return thread


def read_handover(stream) -> dict | None:
    """The handover line from ``stream``, or None at end of file; a malformed line is a ValueError."""
    line = stream.readline()
    if not line:
        return None
    order = json.loads(line)
    if not isinstance(order, dict) or not isinstance(order.get("env"), dict) or not isinstance(order.get("argv"), list):
        raise ValueError("a handover is {'env': {...}, 'argv': [...]}")
    return order


def become_rank(order: dict) -> None:
    """Take on the launch's identity: its environment, its process group, its thread count."""
    os.environ.clear()
    os.environ.update({str(k): str(v) for k, v in order["env"].items()})
    pgid = order.get("pgid")
    if isinstance(pgid, int) and pgid > 1:
        try:
            os.setpgid(0, pgid)
        except OSError:  # the leader is already gone: stay in our own group (the launcher signals us apart)
            pass
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0 and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(int(threads))


def main(argv: list[str] | None = None) -> int:
    import argparse
    parser = argparse.ArgumentParser(description="a warm spare rank (started by launcher.ranks)")
    parser.add_argument("--run-dir", required=True, help="the run it serves (names the process as one of its ranks)")
    parser.add_argument("--nice", type=int, default=IDLE_NICE, help="the imports' priority (0: a cold start)")
    parser.add_argument("--ready-fd", type=int, default=None, help="a pipe to write one byte to once warm")
    args = parser.parse_args(argv)
    warming = preload_in_background(nice=args.nice, ready_fd=args.ready_fd)
    try:
        order = read_handover(sys.stdin)
    except ValueError as exc:
        print(f"spare: {exc}", file=sys.stderr, flush=True)
        os._exit(2)
    if order is None:  # the pool is gone: nothing to become
        os._exit(0)
    handed = order.get("handed") if isinstance(order.get("handed"), (int, float)) else time.time()
    warming.join()  # a cold start: the imports finish here (before the environment changes under them)
    become_rank(order)
    from trainer import train
    sys.argv = [train.__file__, *map(str, order["argv"])]
    train.exit_now(train.main(sys.argv[1:], started=float(handed)))
    return 0  # not reached


if __name__ == "__main__":
    main()
