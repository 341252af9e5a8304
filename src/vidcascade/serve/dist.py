"""``vidcascade serve --parallel temporal`` under torchrun: rank 0 serves, every rank runs the session.

Rank 0 runs the web server and one **driver** thread that owns every collective of the serving job
(torch.distributed wants one thread per rank issuing them, in the same order on every rank):

- between sessions it sends ``idle`` once a second (so waiting ranks never hit the collective
  timeout), or ``start`` with the session's arguments when a client starts one;
- at every tick boundary of a session (the Session's ``on_boundary`` hook) it sends the control
  messages that arrived since the last boundary, once, and every rank (rank 0 included) applies them
  at that same boundary: the ranks' sessions stay in lock step, as the DistEngine requires;
- while the client has paused, it sends ``hold`` once every 0.5 s at the boundary instead.

The other ranks loop in ``follow``: receive, run the same session (no VAE decode), apply the same
controls. Messages are small dicts sent with ``Comm.all_gather_object`` (rank 0's entry is used).
"""

from __future__ import annotations

import logging
import queue
import threading

log = logging.getLogger(__name__)

IDLE_S = 1.0
HOLD_S = 0.5


class ControlRelay:
    """Rank 0's side for one session: control queued by the event loop, sent at tick boundaries."""

    def __init__(self, comm, worker) -> None:
        self.comm = comm
        self.worker = worker
        self._lock = threading.Lock()
        self._pending: list[tuple[str, tuple]] = []

    def put(self, op: str, args: tuple) -> None:
        if op in ("pause", "resume"):
            return  # held at the boundary (see hook): a paused session must keep the ranks talking
        with self._lock:
            self._pending.append((op, args))

    def start(self, msg: dict) -> None:
        self.comm.all_gather_object({"op": "start", **msg})

    def hook(self, session, tau: int) -> None:
        w = self.worker
        while w.paused and not w.stopping:
            self.comm.all_gather_object({"op": "hold"})
            w.wait_halt(HOLD_S)
        with self._lock:
            controls, self._pending = self._pending, []
        self.comm.all_gather_object({"op": "controls", "controls": controls})
        _apply(session, controls)


def _apply(session, controls: list) -> None:
    for op, args in controls:
        getattr(session, op)(*args)


class Driver(threading.Thread):
    """Rank 0: runs each submitted Worker in this one thread, and keeps the other ranks posted."""

    def __init__(self, comm) -> None:
        super().__init__(name="vidcascade-dist-driver", daemon=True)
        self.comm = comm
        self.jobs: queue.Queue = queue.Queue()

    def submit(self, worker) -> None:
        worker.relay = ControlRelay(self.comm, worker)  # before any control can reach the worker
        self.jobs.put(worker)

    def shutdown(self) -> None:
        self.jobs.put(None)
        self.join(timeout=30)

    def run(self) -> None:
        while True:
            try:
                worker = self.jobs.get(timeout=IDLE_S)
            except queue.Empty:
                self.comm.all_gather_object({"op": "idle"})
                continue
            if worker is None:
                self.comm.all_gather_object({"op": "shutdown"})
                return
            worker.run()


def follow(engine, comm) -> None:
    """Ranks other than 0: run the sessions rank 0 announces, until it says shutdown."""

    def hook(session, tau: int) -> None:
        while True:
            m = comm.all_gather_object(None)[0]
            if m["op"] != "hold":
                break
        _apply(session, m["controls"])

    while True:
        m = comm.all_gather_object(None)[0]
        if m["op"] == "idle":
            continue
        if m["op"] == "shutdown":
            return
        session = engine.session(
            m["prompt"],
            seed=m["seed"],
            switch_mode=m["switch_mode"],
            blend_blocks=m["blend_blocks"],
            decode=False,
            on_boundary=hook,
        )
        for _ in session:
            pass
        log.debug("rank %d: session ended", comm.rank)
