"""vidcascade serve: protocol validation, bounded queues, busy client, disconnect, token (real uvicorn on
loopback, the embedded model)."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("websockets")

from _serving import Client, running_server  # noqa: E402
from vidcascade.config import ConfigError  # noqa: E402
from vidcascade.serve.outbox import Outbox  # noqa: E402
from vidcascade.serve.protocol import (  # noqa: E402
    Control,
    Prompt,
    ProtocolError,
    RateLimiter,
    ServeConfig,
    Start,
    frame_message,
    parse_frame,
    parse_message,
)

CFG = ServeConfig()
RED = "a red circle moving right"


def _code(raw) -> str:
    with pytest.raises(ProtocolError) as e:
        parse_message(raw, CFG, num_steps=4)
    return e.value.code


def test_parse_valid_messages():
    m = parse_message(
        json.dumps(
            {
                "type": "start",
                "prompt": " a red circle ",
                "seed": 3,
                "level": 2,
                "attention": "bidirectional",
                "switch_mode": "blend",
            }
        ),
        CFG,
        4,
    )
    assert m == Start("a red circle", 3, 2, "bidirectional", "blend", 4, None)
    m = parse_message('{"type": "prompt", "prompt": "x", "mode": "recache"}', CFG, 4)
    assert m == Prompt("x", "recache")
    assert parse_message('{"type": "stop"}', CFG, 4) == Control("stop")


@pytest.mark.parametrize(
    "raw, code",
    [
        ("not json", "malformed"),
        (b"\x00\x01", "malformed"),
        ("[1, 2]", "malformed"),
        ('{"type": "dance"}', "unknown_type"),
        ("{}", "unknown_type"),
        ('{"type": "start"}', "bad_value"),
        ('{"type": "start", "prompt": "   "}', "bad_value"),
        ('{"type": "start", "prompt": "x", "level": 5}', "bad_value"),
        ('{"type": "start", "prompt": "x", "level": true}', "bad_value"),
        ('{"type": "start", "prompt": "x", "seed": -1}', "bad_value"),
        ('{"type": "start", "prompt": "x", "attention": "sideways"}', "bad_value"),
        ('{"type": "prompt", "prompt": "x", "mode": "fast"}', "bad_value"),
        (json.dumps({"type": "prompt", "prompt": "x" * 501}), "too_long"),
        (json.dumps({"type": "prompt", "prompt": "x" * 5000}), "too_large"),
        ("[" * 3000, "malformed"),
    ],
)
def test_parse_rejects(raw, code):
    assert _code(raw) == code


def test_serve_config_validates():
    with pytest.raises(ConfigError, match="send_queue_frames"):
        ServeConfig(send_queue_frames=0)
    with pytest.raises(ConfigError, match="prompt_rate"):
        ServeConfig(prompt_rate=0)


def test_frame_header_roundtrip():
    assert parse_frame(frame_message(70000, 2, b"\xff\xd8jpeg")) == (70000, 2, b"\xff\xd8jpeg")


def test_rate_limiter_allows_rate_per_second():
    now = [0.0]
    lim = RateLimiter(4.0, lambda: now[0])
    assert [lim.allow() for _ in range(6)] == [True] * 4 + [False] * 2
    now[0] = 0.5  # two tokens back
    assert [lim.allow() for _ in range(3)] == [True, True, False]


def test_outbox_drops_oldest_frames_keeps_events_in_order():
    async def run():
        box = Outbox(max_frames=3)
        box.put_event({"n": 0})
        for i in range(5):
            box.put_frame(bytes([i]))
        box.put_event({"n": 1})
        out = []
        while len(box):
            out.append(await box.get())
        return box, out

    box, out = asyncio.run(run())
    assert box.dropped_frames == 2
    assert out == [
        ("event", {"n": 0}),
        ("frame", b"\x02"),
        ("frame", b"\x03"),
        ("frame", b"\x04"),
        ("event", {"n": 1}),
    ]


# -- against a running server ------------------------------------------------------------------------


def _get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _wait(cond, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def test_session_streams_frames_events_and_recording():
    with running_server(ServeConfig(pace=False)) as (state, host):
        c = Client(f"ws://{host}/ws")
        hello = c.next_event("hello")
        assert hello["fps"] == state.bundle.fps and hello["levels"] == [0, 1, 2, 3, 4]
        c.send({"type": "start", "prompt": RED, "level": 0, "seed": 1})
        started = c.next_event("started")
        assert started["level"] == 0 and started["lag"] == 5
        blocks = [c.next_event("block") for _ in range(3)]
        assert [b["block"] for b in blocks] == [0, 1, 2]
        assert all(b["prompt"] == RED and b["frames"] == 3 for b in blocks)
        c.send({"type": "stop"})
        stopped = c.next_event("stopped")
        assert stopped["reason"] == "client"
        # Every frame of every block arrived, each a JPEG tagged with its block and index.
        got = [(b, i) for b, i, _ in c.frames]
        assert got[:9] == [(b, i) for b in range(3) for i in range(3)]
        assert all(j[:2] == b"\xff\xd8" for _, _, j in c.frames)
        status, body = _get(f"http://{host}{stopped['recording']}")
        assert status == 200 and body[4:8] == b"ftyp"
        assert _get(f"http://{host}/health")[0] == 200
        m = json.loads(_get(f"http://{host}/metrics")[1])
        assert m["sessions_active"] == 0 and m["counters"]["sessions_started"] == 1
        c.close()


def test_malformed_messages_get_errors_and_connection_stays_up():
    with running_server(ServeConfig(pace=False)) as (state, host):
        c = Client(f"ws://{host}/ws")
        c.next_event("hello")
        bad = [
            "{",
            "null",
            '{"type": 1}',
            b"\x00bin",
            "x" * 10_000,
            '{"type": "prompt", "prompt": "x"}',
            '{"type": "start", "prompt": "x", "level": 99}',
            '{"type": "resume"}',
        ]
        codes = []
        for i in range(100):
            c.send(bad[i % len(bad)])
            codes.append(c.next_event("error")["code"])
        assert set(codes) == {"malformed", "too_large", "unknown_type", "not_started", "bad_value"}
        c.send({"type": "start", "prompt": RED, "level": 4})
        assert c.next_event("block")["block"] == 0  # still serving on the same connection
        c.send("garbage while streaming")
        assert c.next_event("error")["code"] == "malformed"
        assert c.next_event("block")["block"] >= 1
        c.close()
        assert _get(f"http://{host}/health")[0] == 200


def test_second_client_is_told_busy_then_can_start_after_the_first_stops():
    with running_server() as (state, host):
        a, b = Client(f"ws://{host}/ws"), Client(f"ws://{host}/ws")
        a.next_event("hello"), b.next_event("hello")
        a.send({"type": "start", "prompt": RED})
        a.next_event("started")
        b.send({"type": "start", "prompt": "a blue square moving up"})
        busy = b.next_event("busy")
        assert "refused" in busy["message"]
        assert state.counters["busy_refusals"] == 1
        # The busy client's connection stays usable; the first client's stream is not disturbed.
        assert a.next_event("block")["prompt"] == RED
        a.send({"type": "stop"})
        a.next_event("stopped")
        b.send({"type": "start", "prompt": "a blue square moving up"})
        assert b.next_event("block")["prompt"] == "a blue square moving up"
        a.close(), b.close()


def test_disconnect_frees_the_engine():
    with running_server() as (state, host):
        c = Client(f"ws://{host}/ws")
        c.next_event("hello")
        c.send({"type": "start", "prompt": RED})
        c.next_event("block")
        worker = state.active
        assert worker is not None
        c.close()
        worker.join(timeout=30)
        assert not worker.is_alive() and state.active is None
        assert worker.stop_reason == "disconnect"
        # The session was stopped without draining: at most the block being made when the client left.
        assert worker.blocks_after_cancel <= 1
        d = Client(f"ws://{host}/ws")
        d.next_event("hello")
        d.send({"type": "start", "prompt": RED})
        assert d.next_event("started")["session"] != worker.sid
        d.close()


def test_disconnect_while_paused_frees_the_engine():
    with running_server() as (state, host):
        c = Client(f"ws://{host}/ws")
        c.send({"type": "start", "prompt": RED})
        c.next_event("block")
        c.send({"type": "pause"})
        c.next_event("paused")
        worker = state.active
        c.close()
        worker.join(timeout=30)
        assert not worker.is_alive() and state.active is None


def test_token_is_required_when_set():
    with running_server(ServeConfig(token="s3cret")) as (state, host):
        for query in ("", "?token=wrong"):
            c = Client(f"ws://{host}/ws{query}")
            assert c.next_event()["code"] == "unauthorized"
            c.close()
        c = Client(f"ws://{host}/ws?token=s3cret")
        assert c.next_event()["type"] == "hello"
        c.close()
        assert _get(f"http://{host}/recording/nothing.mp4")[0] == 403
        assert _get(f"http://{host}/recording/nothing.mp4?token=s3cret")[0] == 404


def test_session_length_limit_stops_it():
    with running_server(ServeConfig(pace=False, max_session_blocks=3)) as (state, host):
        c = Client(f"ws://{host}/ws")
        c.send({"type": "start", "prompt": RED})
        stopped = c.next_event("stopped")
        assert stopped["reason"] == "limit" and stopped["blocks"] == 3
        c.close()


def test_live_prompt_change_and_pause_resume():
    with running_server(ServeConfig(pace=False)) as (state, host):
        c = Client(f"ws://{host}/ws")
        c.send({"type": "start", "prompt": RED, "level": 4, "switch_mode": "blend", "blend_blocks": 2})
        c.next_event("block")
        blue = "a blue square moving up"
        c.send({"type": "prompt", "prompt": blue})
        assert c.next_event("prompt_ack")["prompt"] == blue
        seen = []
        while not seen or seen[-1]["prompts"] != [blue] * 4 or seen[-1]["prompt_weights"] != [1.0] * 4:
            seen.append(c.next_event("block"))
            assert len(seen) < 30, "the new prompt never took full effect"
        # The blend passed through partial weights on the way (blend mode reached the session).
        assert any(0 < w < 1 for ev in seen for w in ev["prompt_weights"])
        c.send({"type": "pause"})
        assert c.next_event("paused")["type"] == "paused"
        assert _wait(lambda: state.active._session.state == "paused")
        c.send({"type": "resume"})
        c.next_event("resumed")
        n = c.next_event("block")["block"]
        assert c.next_event("block")["block"] == n + 1
        c.close()


def test_simulated_viewer_and_effect_blocks():
    from vidcascade.serve.figures import effect_blocks, simulate_viewer

    # 4 fps, 1 s buffer: frames due at 1.0, 1.25, 1.5, 1.75; the third is late by 0.25 s.
    v = simulate_viewer([0.0, 0.1, 1.75, 1.8], fps=4.0, buffer_s=1.0)
    assert v == {"deadline_attainment": 0.5, "underruns": 1}
    evs = [
        {"block": 0, "prompts": ["a", "a"], "prompt_weights": [1.0, 1.0]},
        {"block": 1, "prompts": ["a", "b"], "prompt_weights": [1.0, 0.5]},
        {"block": 2, "prompts": ["b", "b"], "prompt_weights": [0.5, 1.0]},
        {"block": 3, "prompts": ["b", "b"], "prompt_weights": [1.0, 1.0]},
    ]
    a, b = effect_blocks(evs, "b")
    assert (a["block"], b["block"]) == (1, 3)


def test_serve_command_warns_off_loopback_and_reads_the_token_env(monkeypatch, caplog):
    import uvicorn

    from _serving import embedded_bundle
    from vidcascade.cli import build_parser
    from vidcascade.serve import run

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(kw))
    monkeypatch.setenv("VIDCASCADE_TOKEN", "from-env")
    seen = {}
    real = run.build_state

    def spy(bundle, args, fixed_engine=None):
        seen["state"] = real(bundle, args, fixed_engine)
        return seen["state"]

    monkeypatch.setattr(run, "build_state", spy)
    args = build_parser().parse_args(["serve", "--host", "0.0.0.0", "--port", "8123"])
    with caplog.at_level("INFO"):
        assert run.run_serve(args, embedded_bundle()) == 0
    assert calls[0]["host"] == "0.0.0.0" and calls[0]["port"] == 8123
    assert seen["state"].cfg.token == "from-env" and seen["state"].ready
    assert any(r.levelname == "WARNING" and "0.0.0.0" in r.message for r in caplog.records)
    assert any("ready: open http://0.0.0.0:8123/?token=..." in r.message for r in caplog.records)


def _session(c: Client, host: str) -> tuple[list[dict], dict[tuple[int, int], bytes], dict]:
    """One 3-block session at P0, seed 1: its block events, its frames by (block, index), /metrics."""
    c.frames.clear()
    c.send({"type": "start", "prompt": RED, "level": 0, "seed": 1})
    events = []
    while (e := c.next_event())["type"] != "stopped":
        if e["type"] == "block":
            events.append(e)
    frames = {(b, i): j for b, i, j in c.frames if b < 3}
    return events, frames, json.loads(_get(f"http://{host}/metrics")[1])


def test_feature_cache_in_the_live_session():
    """serve --cache: every engine the server builds gets the cache; each block event and /metrics
    carry the running skipped share. Threshold 0 skips nothing and sends the frames of no cache."""
    from vidcascade.caching import apply_feature_cache
    from vidcascade.config import FeatureCacheConfig

    never = FeatureCacheConfig(policy="bwcache", threshold=0.0, interval=1)
    always = FeatureCacheConfig(policy="bwcache", threshold=100.0, interval=1)
    with running_server(ServeConfig(pace=False, max_session_blocks=3), feature_cache=never) as (state, host):
        engine = state.engine(0, None)
        assert engine.executor.feature_cache is not None
        c = Client(f"ws://{host}/ws")
        zero, zero_frames, m = _session(c, host)
        assert len(zero) >= 3 and all(e["cache_skipped_share"] == 0.0 for e in zero)
        assert m["feature_cache"] == {"policy": "bwcache", "threshold": 0.0}
        assert m["latest_session"]["cache_skipped_share"] == 0.0

        apply_feature_cache(engine, FeatureCacheConfig())  # policy none: the hook is removed
        plain, plain_frames, _ = _session(c, host)
        assert all("cache_skipped_share" not in e for e in plain)
        assert len(plain_frames) == 9 and plain_frames == zero_frames  # the same JPEG bytes

        fc = apply_feature_cache(engine, always)
        reused, _, m = _session(c, host)
        shares = [e["cache_skipped_share"] for e in reused]
        # A running figure: the session's counters so far (a block finishing after the last event
        # may still move the hook's own counters a little).
        assert all(0 < s < 1 for s in shares)
        assert shares[-1] == pytest.approx(fc.counters.skipped_share, abs=0.1)
        assert m["latest_session"]["cache_skipped_share"] == shares[-1]
        c.close()


def test_serve_cache_flags_build_the_state_and_refuse_temporal():
    from _serving import embedded_bundle
    from vidcascade.cli import build_parser, main
    from vidcascade.serve.run import build_state

    args = build_parser().parse_args(["serve", "--cache", "bwcache", "--cache-threshold", "0.3"])
    state = build_state(embedded_bundle(), args)
    assert (state.feature_cache.policy, state.feature_cache.threshold) == ("bwcache", 0.3)
    assert state.engine(4, None).executor.feature_cache.cfg.threshold == 0.3
    assert build_state(embedded_bundle(), build_parser().parse_args(["serve"])).feature_cache is None
    assert main(["serve", "--parallel", "temporal", "--cache", "bwcache"]) == 2
