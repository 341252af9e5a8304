"""``vidcascade loadtest``: scripted clients against a running ``vidcascade serve`` on loopback.

Per cascade level: one unpaced session (the most the server can deliver), then one paced session per
prompt-change mode (what a live viewer gets): time to first frame, block inter-arrival percentiles,
real-time factor, the simulated viewer's deadline attainment and underruns, and input-to-effect
latency. Then robustness: 4 clients at once, 100 malformed messages, a client that stops reading;
the server must keep serving and hold no session, connection or thread afterwards.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import urllib.request
from urllib.parse import urlsplit

import numpy as np

from .figures import effect_blocks, percentiles, real_time_factor, simulate_viewer
from .protocol import parse_frame

log = logging.getLogger(__name__)

PROMPT_A = "a red circle moving right"
PROMPT_B = "a blue square moving up"
MODES = ("no-recache", "recache", "blend")


class _Client:
    def __init__(self, url: str, rcvbuf: int | None = None) -> None:
        from websockets.sync.client import connect

        sock = None
        if rcvbuf is not None:  # a small receive buffer makes a non-reading client back up quickly
            u = urlsplit(url)
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.connect((u.hostname, u.port))
        self.ws = connect(url, sock=sock, open_timeout=30, close_timeout=5, max_size=1 << 22)
        self.t0 = time.perf_counter()
        self.events: list[tuple[float, dict]] = []
        self.frame_at: dict[int, float] = {}  # block -> arrival of its first frame
        self.frames = 0

    def send(self, msg) -> float:
        self.ws.send(msg if isinstance(msg, str) else json.dumps(msg))
        return time.perf_counter() - self.t0

    def pump(self, until, timeout: float = 120.0) -> dict | None:
        """Receive until ``until(event)`` is true for a JSON event (returned) or the timeout."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            try:
                m = self.ws.recv(timeout=deadline - time.perf_counter())
            except TimeoutError:
                return None
            now = time.perf_counter() - self.t0
            if isinstance(m, bytes):
                block, _, _ = parse_frame(m)
                self.frame_at.setdefault(block, now)
                self.frames += 1
                continue
            ev = json.loads(m)
            self.events.append((now, ev))
            if until(ev):
                return ev
        return None

    def blocks(self) -> list[dict]:
        return [ev for _, ev in self.events if ev["type"] == "block"]

    def close(self) -> None:
        self.ws.close()


def _http_json(base: str, path: str) -> dict:
    with urllib.request.urlopen(base + path, timeout=30) as r:
        return json.loads(r.read())


def _session(url: str, level: int, mode: str, blocks: int, every: int | None, pace: bool) -> dict:
    """One session; with ``every``, the prompt alternates B, A, B, ... after every ``every`` blocks.
    Returns its raw timings (seconds from the connection) and block events."""
    c = _Client(url)
    hello = c.pump(lambda e: e["type"] == "hello")
    t_start = c.send({"type": "start", "prompt": PROMPT_A, "level": level, "switch_mode": mode, "pace": pace})
    ok = c.pump(lambda e: e["type"] in ("started", "busy", "error"))
    if ok is None or ok["type"] != "started":
        c.close()
        raise RuntimeError(f"the server did not start a session: {ok}")
    switches = []  # (time sent, target prompt, blocks received before it, in flight then)
    n = 0
    while n < blocks:
        ev = c.pump(lambda e: e["type"] in ("block", "stopped", "error"))
        if ev is None or ev["type"] != "block":
            raise RuntimeError(f"session ended early: {ev}")
        n += 1
        if every is not None and n % every == 0 and n + every <= blocks:
            target = PROMPT_B if len(switches) % 2 == 0 else PROMPT_A
            t = c.send({"type": "prompt", "prompt": target, "mode": mode})
            switches.append((t, target, n, ev["in_flight"]))
    c.pump(lambda e: e["type"] == "block")  # the frames of the last block come after its event
    c.send({"type": "stop"})
    c.pump(lambda e: e["type"] == "stopped")
    c.close()
    return {
        "hello": hello,
        "t_start": t_start,
        "switches": switches,
        "blocks": c.blocks()[:blocks],
        "frame_at": c.frame_at,
    }


def _stream_figures(run: dict, buffer_s: float) -> dict:
    fps, fpb = run["hello"]["fps"], run["hello"]["frames_per_block"]
    arrived = run["frame_at"]
    bt = [arrived[ev["block"]] - run["t_start"] for ev in run["blocks"] if ev["block"] in arrived]
    arrivals = [t for t in bt for _ in range(fpb)]  # a block's frames arrive together
    gaps = [b - a for a, b in zip(bt, bt[1:])]
    return {
        "ttff_s": bt[0] if bt else None,
        "inter_arrival_s": percentiles(gaps),
        "rtf": real_time_factor(bt, fpb, fps),
        **simulate_viewer(arrivals, fps, buffer_s),
    }


def _effect(run: dict) -> dict:
    """Input-to-effect of each prompt change in the session, and their medians."""
    samples = []
    for t, target, n, in_flight in run["switches"]:
        a, b = effect_blocks(run["blocks"][n:], target)

        def at(ev, t=t):
            return None if ev is None else run["frame_at"][ev["block"]] - t

        samples.append(
            {
                "any_s": at(a),
                "all_s": at(b),
                "after_block": n - 1,
                "in_flight": in_flight,
                "any_block": a and a["block"],
                "all_block": b and b["block"],
            }
        )

    def median(key):
        xs = [s[key] for s in samples if s[key] is not None]
        return float(np.median(xs)) if len(xs) == len(samples) and xs else None

    return {
        "any_s": median("any_s"),
        "all_s": median("all_s"),
        "in_flight": median("in_flight"),
        "any_blocks": median_blocks(samples, "any_block"),
        "all_blocks": median_blocks(samples, "all_block"),
        "samples": samples,
    }


def median_blocks(samples: list[dict], key: str) -> float | None:
    """Median count of blocks from the last block before the change to the effect block."""
    xs = [s[key] - s["after_block"] for s in samples if s[key] is not None]
    return float(np.median(xs)) if xs and len(xs) == len(samples) else None


def measure_level(url: str, level: int, blocks: int, every: int, buffer_s: float) -> dict:
    out: dict = {"level": level}
    unpaced = _session(url, level, "no-recache", blocks, None, pace=False)
    out["unpaced"] = _stream_figures(unpaced, buffer_s)
    out["modes"] = {}
    for mode in MODES:
        run = _session(url, level, mode, blocks, every, pace=True)
        out["modes"][mode] = {"stream": _stream_figures(run, buffer_s), "effect": _effect(run)}
        log.info("level P%d %s: %s", level, mode, out["modes"][mode]["effect"])
    out["paced"] = out["modes"]["no-recache"]["stream"]
    return out


# -- robustness ----------------------------------------------------------------------------------


def _concurrent_clients(url: str, n: int = 4) -> dict:
    """n clients send start at once: one is served, the others are told busy."""
    clients = [_Client(url) for _ in range(n)]
    for c in clients:
        c.pump(lambda e: e["type"] == "hello")
    go = threading.Barrier(n)
    replies: list[str | None] = [None] * n

    def one(i: int) -> None:
        go.wait()
        clients[i].send({"type": "start", "prompt": PROMPT_A})
        ev = clients[i].pump(lambda e: e["type"] in ("started", "busy", "error"), timeout=60)
        replies[i] = None if ev is None else ev["type"]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c, r in zip(clients, replies):
        if r == "started":
            c.pump(lambda e: e["type"] == "block")
            c.send({"type": "stop"})
            c.pump(lambda e: e["type"] == "stopped")
        c.close()
    return {
        "clients": n,
        "served": replies.count("started"),
        "busy": replies.count("busy"),
        "other": n - replies.count("started") - replies.count("busy"),
    }


def _malformed(url: str, n: int = 100) -> dict:
    c = _Client(url)
    c.pump(lambda e: e["type"] == "hello")
    bad = ["{", "[]", '{"type": "fly"}', "x" * 10_000, '{"type": "start", "prompt": ""}', '{"type": "pause"}']
    errors = 0
    for i in range(n):
        c.send(bad[i % len(bad)])
        errors += c.pump(lambda e: e["type"] == "error", timeout=30) is not None
    c.send({"type": "start", "prompt": PROMPT_A})
    served = c.pump(lambda e: e["type"] == "block", timeout=60) is not None
    c.send({"type": "stop"})
    c.pump(lambda e: e["type"] == "stopped")
    c.close()
    return {"sent": n, "error_replies": errors, "served_after": served}


def _stalled_reader(url: str, base: str, seconds: float) -> dict:
    """A client starts an unpaced session and stops reading; the server must stay responsive and
    drop that client's frames rather than queue them."""
    c = _Client(url, rcvbuf=4096)
    c.send({"type": "start", "prompt": PROMPT_A, "pace": False})
    t_end = time.perf_counter() + seconds
    health_s = []
    while time.perf_counter() < t_end:
        t = time.perf_counter()
        _http_json(base, "/health")
        health_s.append(time.perf_counter() - t)
        time.sleep(0.25)
    during = _http_json(base, "/metrics")
    c.ws.close_timeout = 1
    c.close()
    deadline = time.perf_counter() + 30
    while _http_json(base, "/metrics")["sessions_active"] and time.perf_counter() < deadline:
        time.sleep(0.05)
    after = _http_json(base, "/metrics")
    return {
        "seconds": seconds,
        "health_max_s": max(health_s),
        "health_checks": len(health_s),
        "session_active_during": during["sessions_active"],
        "frames_dropped": after["counters"].get("frames_dropped", 0),
        "session_freed": after["sessions_active"] == 0,
    }


def robustness(url: str, base: str) -> dict:
    before = _http_json(base, "/metrics")
    out = {
        "concurrent": _concurrent_clients(url),
        "malformed": _malformed(url),
        "stalled_reader": _stalled_reader(url, base, 5.0),
    }
    time.sleep(0.5)
    after = _http_json(base, "/metrics")
    out["leaks"] = {
        k: {"before": before[k], "after": after[k]}
        for k in ("sessions_active", "connections_open", "threads", "rss_bytes")
    }
    return out


# -- the command ---------------------------------------------------------------------------------


def _ms(x) -> str:
    return "-" if x is None else f"{1000 * x:.0f}"


def _num(x) -> str:
    return "-" if x is None else f"{x:g}"


def format_report(rep: dict) -> str:
    m = rep["machine"]
    lines = [
        f"serving figures: model {rep['model']} on {m.get('gpu', m['processor'])} ({m['device']}, "
        f"{m['torch_threads']} torch threads), {rep['fps']:g} fps, viewer start-up buffer "
        f"{rep['buffer_s']:g} s, {rep['blocks']} blocks per session, a prompt change every "
        f"{rep['switch_every']} blocks",
        "",
        "level  pacing   TTFF ms  gap p50/p95/p99 ms  RTF    deadline  underruns",
    ]
    for row in rep["levels"]:
        for name in ("unpaced", "paced"):
            s = row[name]
            gap = s["inter_arrival_s"]
            dl = "-" if s["deadline_attainment"] is None else f"{100 * s['deadline_attainment']:.0f}%"
            rtf = "-" if s["rtf"] is None else f"{s['rtf']:.2f}"
            lines.append(
                f"P{row['level']:<5} {name:<8} {_ms(s['ttff_s']):>7}  "
                f"{_ms(gap['p50']):>5}/{_ms(gap['p95']):>5}/{_ms(gap['p99']):>5}  {rtf:>5}  {dl:>8}  "
                f"{s['underruns']:>9}"
            )
    lines += [
        "",
        "input-to-effect (paced; prompt message to the first frame's arrival; median of "
        f"{len(rep['levels'][0]['modes']['no-recache']['effect']['samples'])} changes)",
        "level  mode         in flight  (a) any step ms  (b) entirely ms  (a)/(b) blocks later",
    ]
    for row in rep["levels"]:
        for mode, r in row["modes"].items():
            e = r["effect"]
            blocks = f"{_num(e['any_blocks'])}/{_num(e['all_blocks'])}"
            lines.append(
                f"P{row['level']:<5} {mode:<12} {_num(e['in_flight']):>9}  {_ms(e['any_s']):>15}  "
                f"{_ms(e['all_s']):>15}  {blocks:>10}"
            )
    rob = rep.get("robustness")
    if rob:
        c, mf, st = rob["concurrent"], rob["malformed"], rob["stalled_reader"]
        lines += [
            "",
            f"{c['clients']} clients at once: {c['served']} served, {c['busy']} told busy, "
            f"{c['other']} other",
            f"{mf['sent']} malformed messages: {mf['error_replies']} error replies, "
            f"served afterwards: {mf['served_after']}",
            f"client that stops reading for {st['seconds']:g} s: /health max {_ms(st['health_max_s'])} ms "
            f"over {st['health_checks']} checks, frames dropped {st['frames_dropped']}, "
            f"session freed on close: {st['session_freed']}",
            "leaks (before -> after): "
            + ", ".join(f"{k} {v['before']} -> {v['after']}" for k, v in rob["leaks"].items()),
        ]
    return "\n".join(lines)


def run_loadtest(args) -> int:
    u = urlsplit(args.url)
    if u.scheme not in ("ws", "wss") or u.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(
            f"--url must be a ws:// URL on loopback (the load test talks to a local server), got {args.url!r}"
        )
    if args.switch_every < 1 or args.blocks < 2 * args.switch_every:
        raise ValueError(
            f"need --switch-every >= 1 and --blocks >= 2 x it, got {args.switch_every} and {args.blocks}"
        )
    base = f"http://{u.netloc}"
    try:
        metrics = _http_json(base, "/metrics")
    except OSError as e:
        raise ValueError(f"no server answers at {base} ({e}); start one with vidcascade serve") from None
    probe = _Client(args.url)
    hello = probe.pump(lambda e: e["type"] == "hello")
    probe.close()
    levels = args.levels if args.levels is not None else [0, max(hello["levels"])]
    rep = {
        "model": hello["model"],
        "fps": hello["fps"],
        "machine": metrics["machine"],
        "buffer_s": args.buffer_s,
        "blocks": args.blocks,
        "switch_every": args.switch_every,
        "levels": [],
    }
    for level in levels:
        if level not in hello["levels"]:
            raise ValueError(f"--levels: the model has levels {hello['levels']}, got {level}")
        rep["levels"].append(measure_level(args.url, level, args.blocks, args.switch_every, args.buffer_s))
    if not args.skip_robustness:
        rep["robustness"] = robustness(args.url, base)
    print(format_report(rep))
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(rep, f, indent=2)
        print(f"wrote {args.json_path}")
    return 0
