// vidcascade live page: one WebSocket, a jitter buffer played at the model's frame rate, a chart.
// Protocol: docs/serving.md. No framework, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const token = new URLSearchParams(location.search).get("token");
const tokenQuery = token ? "?token=" + encodeURIComponent(token) : "";

// Everything the page knows, readable from a test through window.vc.
const vc = {
  hello: null, session: null, running: false, paused: false,
  fps: 8, buffer: [], playing: false, maxBufferFrames: 24, startFrames: 3,
  shown: 0, blocks: 0, serverDropped: 0, clientDropped: 0, underruns: 0, inFlight: 0,
  latencies: [], fpsPoints: [], shownTimes: [], lastBlock: null, prompt: null,
};
window.vc = vc;

const video = $("video");
const vctx = video.getContext("2d");
const chart = $("chart");
const cctx = chart.getContext("2d");
let ws = null;
let playTimer = null;

function setStatus(text) { $("status").textContent = text; }
function setMessage(text) { $("message").textContent = text || ""; }

function fillSelect(sel, values, chosen, label) {
  sel.innerHTML = "";
  for (const v of values) {
    const o = document.createElement("option");
    o.value = String(v); o.textContent = label ? label(v) : String(v);
    if (v === chosen) o.selected = true;
    sel.appendChild(o);
  }
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  ws = new WebSocket(scheme + "//" + location.host + "/ws" + tokenQuery);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => setStatus("connected");
  ws.onclose = (e) => { setStatus("disconnected" + (e.code === 1008 ? " (token)" : "")); setRunning(false); };
  ws.onmessage = (e) => (typeof e.data === "string" ? onEvent(JSON.parse(e.data)) : onFrame(e.data));
}

function send(msg) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(msg));
}

function onEvent(ev) {
  switch (ev.type) {
    case "hello":
      vc.hello = ev; vc.fps = ev.fps;
      vc.maxBufferFrames = Math.max(6, Math.round(ev.fps * 3));
      vc.startFrames = ev.frames_per_block;
      $("model").textContent = ev.model + " · " + ev.fps + " fps";
      fillSelect($("level"), ev.levels, ev.default_level, (v) => "P" + v + (v === 0 ? " (sequential)" : ""));
      fillSelect($("attention"), ev.attentions, ev.default_attention);
      fillSelect($("mode"), ev.switch_modes, "no-recache");
      setStatus(ev.busy ? "connected (engine busy)" : "ready");
      break;
    case "started":
      vc.session = ev.session; resetFigures(); setRunning(true);
      setStatus("streaming · P" + ev.level + " " + ev.attention + " · seed " + ev.seed);
      setMessage("");
      break;
    case "block":
      vc.blocks += 1; vc.lastBlock = ev; vc.inFlight = ev.in_flight; vc.prompt = ev.prompt;
      vc.serverDropped = ev.dropped_frames || 0;
      vc.latencies.push(ev.latency_s * 1000);
      if (vc.latencies.length > 120) vc.latencies.shift();
      break;
    case "paused": vc.paused = true; $("pause").textContent = "Resume"; setStatus("paused"); break;
    case "resumed": vc.paused = false; $("pause").textContent = "Pause"; setStatus("streaming"); break;
    case "stopped":
      setRunning(false);
      setStatus("stopped (" + ev.reason + ", " + ev.blocks + " blocks)");
      if (ev.blocks > 0) {
        $("download").href = ev.recording + tokenQuery;
        $("download").classList.remove("disabled");
      }
      break;
    case "busy": setMessage(ev.message); setStatus("busy"); break;
    case "error": setMessage(ev.code + ": " + ev.message); break;
    default: break;  // prompt_ack, stopping: nothing to show
  }
  updateCounters();
}

async function onFrame(buf) {
  // 8-byte header: block u32, index u16, reserved u16 (big-endian), then one JPEG.
  const view = new DataView(buf);
  const block = view.getUint32(0);
  const bitmap = await createImageBitmap(new Blob([buf.slice(8)], { type: "image/jpeg" }));
  vc.buffer.push({ block, bitmap });
  // A bounded jitter buffer: if the network delivered a burst, drop the oldest rather than lag.
  while (vc.buffer.length > vc.maxBufferFrames) { vc.buffer.shift().bitmap.close(); vc.clientDropped += 1; }
}

function playTick() {
  // One frame per 1/fps: a real-time viewer. An empty buffer while streaming is an underrun.
  if (!vc.playing) {
    if (vc.buffer.length >= vc.startFrames) vc.playing = true; else return;
  }
  const item = vc.buffer.shift();
  if (!item) {
    if (vc.running && !vc.paused) vc.underruns += 1;
    vc.playing = false;  // wait for the start-up buffer again
    updateCounters();
    return;
  }
  if (video.width !== item.bitmap.width || video.height !== item.bitmap.height) {
    video.width = item.bitmap.width; video.height = item.bitmap.height;
  }
  vctx.drawImage(item.bitmap, 0, 0);
  item.bitmap.close();
  vc.shown += 1; vc.shownBlock = item.block;
  const now = performance.now();
  vc.shownTimes.push(now);
  while (vc.shownTimes.length && vc.shownTimes[0] < now - 1000) vc.shownTimes.shift();
  updateCounters();
}

function sampleFps() {
  if (!vc.running) return;
  vc.fpsPoints.push(vc.shownTimes.length);
  if (vc.fpsPoints.length > 120) vc.fpsPoints.shift();
  drawChart();
}

function drawChart() {
  const w = chart.width, h = chart.height;
  cctx.clearRect(0, 0, w, h);
  cctx.strokeStyle = "#333"; cctx.beginPath();
  for (let y = 0; y <= h; y += h / 4) { cctx.moveTo(0, y); cctx.lineTo(w, y); }
  cctx.stroke();
  const series = (pts, color, scale) => {
    if (pts.length < 2) return;
    cctx.strokeStyle = color; cctx.beginPath();
    pts.forEach((v, i) => {
      const x = (i / 119) * w, y = h - Math.min(1, v / scale) * (h - 4) - 2;
      if (i === 0) cctx.moveTo(x, y); else cctx.lineTo(x, y);
    });
    cctx.stroke();
  };
  const latMax = Math.max(50, ...vc.latencies) * 1.1;
  series(vc.latencies, "#e8a33d", latMax);
  series(vc.fpsPoints, "#4fb0e8", vc.fps * 2);
  cctx.fillStyle = "#aaa"; cctx.font = "10px sans-serif";
  cctx.fillText(latMax.toFixed(0) + " ms", 2, 10);
  cctx.fillText("fps max " + vc.fps * 2, w - 60, 10);
}

function updateCounters() {
  $("c-blocks").textContent = vc.blocks;
  $("c-shown").textContent = vc.shown;
  $("c-dropped").textContent = vc.serverDropped + vc.clientDropped;
  $("c-underruns").textContent = vc.underruns;
  $("c-buffer").textContent = vc.buffer.length;
  $("c-inflight").textContent = vc.inFlight;
  $("c-prompt").textContent = vc.prompt || "–";
}

function resetFigures() {
  for (const item of vc.buffer) item.bitmap.close();
  Object.assign(vc, { buffer: [], playing: false, paused: false, shown: 0, blocks: 0, serverDropped: 0,
                      clientDropped: 0, underruns: 0, latencies: [], fpsPoints: [], shownTimes: [] });
  $("pause").textContent = "Pause";
}

function setRunning(on) {
  vc.running = on;
  $("start").disabled = on;
  $("pause").disabled = !on;
  $("stop").disabled = !on;
  if (on) $("download").classList.add("disabled");
  clearInterval(playTimer);
  playTimer = setInterval(playTick, 1000 / vc.fps);
}

function start() {
  const prompt = $("prompt").value.trim();
  if (!prompt) { setMessage("type a prompt first"); return; }
  send({
    type: "start", prompt,
    seed: Math.max(0, parseInt($("seed").value, 10) || 0),
    level: parseInt($("level").value, 10),
    attention: $("attention").value,
    switch_mode: $("mode").value,
  });
}

$("start").onclick = start;
$("pause").onclick = () => send({ type: vc.paused ? "resume" : "pause" });
$("stop").onclick = () => send({ type: "stop" });
$("prompt-form").onsubmit = (e) => {
  e.preventDefault();
  const prompt = $("prompt").value.trim();
  if (!vc.running) { start(); return; }
  if (prompt) send({ type: "prompt", prompt, mode: $("mode").value });
};
setInterval(sampleFps, 500);
connect();
