// voicescreen demo page: the microphone to the server over WebRTC (Opus; events on a data
// channel) or, when WebRTC is unavailable or cannot connect, over a WebSocket (an AudioWorklet
// sends float32 PCM). The server does all the scoring; this page only draws its events.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  const COLORS = ["#3b5bdb", "#e8590c", "#0ca678", "#ae3ec9", "#1098ad", "#f08c00"];
  const Y_LIMIT = 40; // the chart's scale grows with the scores up to +-Y_LIMIT
  const VERDICT_TEXT = {
    idle: ["Ready", "Press <b>Start</b> and speak for a few seconds."],
    listening: ["Listening…", "The first score comes after 1.5 s of speech."],
    bonafide: ["Bona fide speech", "The voice sounds like a live human speaker."],
    spoof: ["Synthetic speech detected", "The voice looks generated or converted, not a live speaker."],
    uncertain: ["Uncertain", "Not enough evidence either way yet; keep talking."],
  };

  // --- state -------------------------------------------------------------------------------

  const state = {
    phase: "loading", // loading | ready | starting | running | stopping | done | error
    token: params.get("token") || localStorage.getItem("voicescreen-token") || "",
    models: [], // from /v1/models
    selected: new Set(),
    smoothing: { enter: 0.5, leave: 0 },
    transport: null, // "webrtc" | "websocket"
    streamId: null,
    series: {}, // model -> [{t, score, smoothed, verdict, early}]
    noSpeech: [], // [{t, model}]
    latencies: [],
    windows: 0,
    skipped: 0,
    duration: 0,
    verdicts: {}, // model -> verdict
    summary: null,
    events: [], // every message received, for tests and debugging
  };
  window.voicescreen = state;
  if (params.get("token")) localStorage.setItem("voicescreen-token", params.get("token"));

  let media = null; // MediaStream from getUserMedia
  let pc = null;
  let channel = null;
  let ws = null;
  let audio = null; // {ctx, node, source}
  let stopTimer = null;

  const authHeaders = () => (state.token ? { Authorization: `Bearer ${state.token}` } : {});

  function setPhase(phase) {
    state.phase = phase;
    document.body.dataset.state = phase;
    const button = $("start");
    const running = phase === "starting" || phase === "running" || phase === "stopping";
    button.classList.toggle("running", running);
    $("start-label").textContent =
      phase === "starting" ? "Starting…" : phase === "stopping" ? "Finishing…" : running ? "Stop" : "Start";
    button.disabled = phase === "loading" || phase === "error" || phase === "starting" || phase === "stopping";
    document.querySelectorAll(".chip").forEach((c) => (c.disabled = running));
    $("transport").disabled = running;
  }

  function setStatus(kind, text) {
    $("status").dataset.kind = kind;
    $("status-text").textContent = text;
  }

  function showAlert(title, text, kind = "error") {
    const alert = $("alert");
    alert.dataset.kind = kind;
    $("alert-title").textContent = title;
    $("alert-text").textContent = text;
    alert.hidden = false;
  }

  function hideAlert() {
    $("alert").hidden = true;
  }

  function setVerdict(verdict, score, detail) {
    const [label, text] = VERDICT_TEXT[verdict] || VERDICT_TEXT.idle;
    $("verdict").dataset.verdict = verdict;
    $("verdict-label").textContent = label;
    $("verdict-detail").innerHTML = detail || text;
    $("verdict-score").textContent =
      score === null || score === undefined ? "–" : (score > 0 ? "+" : "") + score.toFixed(2);
  }

  function log(kind, text, cls) {
    const li = document.createElement("li");
    const t = document.createElement("span");
    t.className = "t";
    t.textContent = state.duration ? `${state.duration.toFixed(1)} s` : "";
    const k = document.createElement("span");
    k.className = `k ${cls || kind}`;
    k.textContent = kind;
    const m = document.createElement("span");
    m.textContent = text;
    li.append(t, k, m);
    const list = $("log");
    list.prepend(li);
    while (list.children.length > 200) list.lastChild.remove();
  }

  // --- server ------------------------------------------------------------------------------

  async function fetchWithTimeout(url, options = {}, ms = 8000) {
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), ms);
    try {
      return await fetch(url, { ...options, signal: ctl.signal });
    } finally {
      clearTimeout(timer);
    }
  }

  function unreachable(detail) {
    setStatus("error", "Server unreachable");
    showAlert(
      "Cannot reach the voicescreen server",
      `${location.origin} did not answer (${detail}). Check that \`voicescreen serve\` is running and reachable, then reload this page.`,
    );
  }

  async function errorText(response) {
    try {
      const body = await response.json();
      return body.detail || JSON.stringify(body);
    } catch {
      return `HTTP ${response.status}`;
    }
  }

  async function loadServer() {
    let health;
    try {
      const r = await fetchWithTimeout("/healthz");
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      health = await r.json();
    } catch (e) {
      setPhase("error");
      unreachable(e.name === "AbortError" ? "timed out" : e.message || "network error");
      return;
    }
    let r;
    try {
      r = await fetchWithTimeout("/v1/models", { headers: authHeaders() });
    } catch (e) {
      setPhase("error");
      unreachable(e.message || "network error");
      return;
    }
    if (r.status === 401) {
      setPhase("error");
      setStatus("error", "Access token needed");
      showAlert(
        "This server needs an access token",
        state.token
          ? "The token this page has was refused. Open the page as /?token=YOUR_TOKEN with the server's token."
          : "Open the page as /?token=YOUR_TOKEN with the token the server was started with (--token).",
      );
      return;
    }
    if (!r.ok) {
      setPhase("error");
      showAlert("The server refused this page", await errorText(r));
      return;
    }
    const info = await r.json();
    state.models = info.models;
    state.smoothing = info.smoothing || state.smoothing;
    const wanted = (params.get("models") || "").split(",").filter(Boolean);
    state.models.forEach((m, i) => {
      m.color = COLORS[i % COLORS.length];
      if (!wanted.length || wanted.includes(m.name)) state.selected.add(m.name);
    });
    if (!state.selected.size) state.selected.add(info.default);
    renderModels();
    $("footer-models").textContent = state.models
      .map((m) => `${m.name} (${m.architecture})`)
      .join(", ");
    setStatus("ok", `Connected · v${health.version}`);
    setPhase("ready");
    draw();
  }

  function renderModels() {
    const box = $("models");
    box.textContent = "";
    for (const m of state.models) {
      const chip = document.createElement("button");
      chip.type = "button";
      chip.className = "chip";
      chip.setAttribute("aria-pressed", String(state.selected.has(m.name)));
      chip.title = `${m.architecture}, ${m.window_seconds.toFixed(2)} s windows`;
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = m.color;
      const arch = document.createElement("small");
      arch.className = "chip-arch";
      arch.textContent = m.architecture;
      chip.append(swatch, document.createTextNode(m.name), arch);
      chip.addEventListener("click", () => {
        if (state.selected.has(m.name) && state.selected.size > 1) state.selected.delete(m.name);
        else state.selected.add(m.name);
        renderModels();
        renderLegend();
      });
      box.append(chip);
    }
    renderLegend();
  }

  function renderLegend() {
    const box = $("legend");
    box.textContent = "";
    for (const m of state.models) {
      if (!state.selected.has(m.name)) continue;
      const item = document.createElement("span");
      const line = document.createElement("i");
      line.style.background = m.color;
      const name = document.createElement("b");
      name.textContent = m.name;
      item.append(line, name, document.createTextNode(` ${state.verdicts[m.name] || ""}`));
      box.append(item);
    }
  }

  // --- events ------------------------------------------------------------------------------

  const primaryModel = () => state.models.map((m) => m.name).find((n) => state.selected.has(n));

  function onMessage(msg) {
    state.events.push(msg);
    switch (msg.type) {
      case "started":
        state.streamId = msg.stream;
        $("stream-id").textContent = `stream ${msg.stream} · ${state.transport}`;
        setPhase(state.phase === "stopping" ? "stopping" : "running");
        setStatus("live", `Live · ${state.transport === "webrtc" ? "WebRTC" : "WebSocket"}`);
        log("started", `models ${Object.keys(msg.models).join(", ")}, ${msg.format.sample_rate} Hz ${msg.format.encoding}`);
        break;
      case "score": {
        (state.series[msg.model] ||= []).push({
          t: msg.end,
          score: msg.calibrated,
          smoothed: msg.smoothed,
          verdict: msg.verdict,
          early: msg.early,
        });
        state.windows += 1;
        state.latencies.push(msg.latency_ms);
        state.duration = Math.max(state.duration, msg.end);
        state.verdicts[msg.model] = msg.verdict;
        if (msg.model === primaryModel()) setVerdict(msg.verdict, msg.smoothed);
        updateStats();
        renderLegend();
        break;
      }
      case "no_speech":
        state.noSpeech.push({ t: msg.end, model: msg.model });
        state.skipped += 1;
        state.duration = Math.max(state.duration, msg.end);
        updateStats();
        break;
      case "verdict":
        log(msg.verdict, `${msg.model}: ${msg.previous} → ${msg.verdict} (smoothed ${msg.smoothed.toFixed(2)})`);
        break;
      case "overloaded":
        log("overloaded", `${msg.model}: ${msg.windows.length} window(s) skipped, the server is busy`);
        break;
      case "error":
        log("error", `${msg.code}: ${msg.message}`);
        if (msg.fatal) showAlert("The stream stopped", `${msg.message} (${msg.code})`);
        break;
      case "summary":
        onSummary(msg);
        break;
    }
    draw();
  }

  function onSummary(msg) {
    state.summary = msg;
    state.duration = Math.max(state.duration, msg.duration);
    const primary = msg.models[primaryModel()] || Object.values(msg.models)[0];
    for (const [name, s] of Object.entries(msg.models)) {
      log(s.verdict, `${name}: final ${s.verdict}, ${s.scored} of ${s.windows} windows scored, mean ${s.mean === null ? "–" : s.mean.toFixed(2)}`);
    }
    if (primary) {
      const scored = primary.scored > 0;
      const why = primary.reason && scored ? ` Uncertain: ${primary.reason}.` : "";
      setVerdict(
        scored ? primary.verdict : "idle",
        primary.mean,
        scored
          ? `Final verdict over ${msg.duration.toFixed(1)} s: ${primary.scored} windows scored, mean ${primary.mean.toFixed(2)}.${why}`
          : "No speech was heard: nothing to score. Check the microphone and try again.",
      );
      $("verdict-score-label").textContent = "mean score";
    }
    updateStats();
    finish();
  }

  function updateStats() {
    const last = state.latencies[state.latencies.length - 1];
    const sorted = [...state.latencies].sort((a, b) => a - b);
    const p50 = sorted.length ? sorted[Math.floor((sorted.length - 1) / 2)] : null;
    const ms = (v) => (v === null || v === undefined ? "–" : v < 1000 ? `${Math.round(v)} ms` : `${(v / 1000).toFixed(2)} s`);
    $("stat-latency").textContent = ms(last);
    $("stat-p50").textContent = ms(p50);
    $("stat-windows").textContent = String(state.windows);
    $("stat-skipped").textContent = String(state.skipped);
    $("stat-time").textContent = `${state.duration.toFixed(1)} s`;
  }

  // --- chart -------------------------------------------------------------------------------

  function draw() {
    const canvas = $("chart");
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth;
    const h = canvas.clientHeight;
    if (!w || !h) return;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    const g = canvas.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);

    const pad = { l: 44, r: 14, t: 12, b: 28 };
    const span = Math.min(30, Math.max(12, Math.ceil(state.duration) + 4)); // seconds shown
    const tMax = Math.max(span, Math.ceil(state.duration) + 2);
    const tMin = tMax - span;
    let yMax = 4;
    for (const name of Object.keys(state.series)) {
      for (const p of state.series[name]) if (p.t >= tMin) yMax = Math.max(yMax, Math.min(Y_LIMIT, Math.abs(p.score) * 1.25));
    }
    yMax = Math.ceil(yMax);
    state.yMax = yMax; // the scale drawn (tests read it)
    const x = (t) => pad.l + ((t - tMin) / span) * (w - pad.l - pad.r);
    const y = (v) => pad.t + ((yMax - Math.max(-yMax, Math.min(yMax, v))) / (2 * yMax)) * (h - pad.t - pad.b);

    // bona fide / spoof regions
    g.fillStyle = "rgba(18, 128, 92, 0.06)";
    g.fillRect(pad.l, pad.t, w - pad.l - pad.r, y(0) - pad.t);
    g.fillStyle = "rgba(201, 42, 42, 0.06)";
    g.fillRect(pad.l, y(0), w - pad.l - pad.r, h - pad.b - y(0));

    // grid and axes
    g.font = "11px system-ui, sans-serif";
    g.fillStyle = "#667085";
    g.strokeStyle = "#e3e8ef";
    g.lineWidth = 1;
    g.textAlign = "right";
    g.textBaseline = "middle";
    const step = yMax > 8 ? 4 : 2;
    for (let v = -Math.floor(yMax / step) * step; v <= yMax; v += step) {
      g.beginPath();
      g.moveTo(pad.l, y(v));
      g.lineTo(w - pad.r, y(v));
      g.stroke();
      g.fillText((v > 0 ? "+" : "") + v, pad.l - 8, y(v));
    }
    g.textAlign = "center";
    g.textBaseline = "top";
    const tick = span > 15 ? 5 : 2;
    for (let t = Math.ceil(tMin / tick) * tick; t <= tMax; t += tick) {
      if (t < 0) continue;
      g.fillText(`${t} s`, x(t), h - pad.b + 8);
    }
    g.textAlign = "right";
    g.font = "600 11px system-ui, sans-serif";
    g.fillStyle = "rgba(18, 128, 92, .85)";
    g.fillText("BONA FIDE ▲", w - pad.r - 6, pad.t + 6);
    g.fillStyle = "rgba(201, 42, 42, .85)";
    g.textBaseline = "bottom";
    g.fillText("SPOOF ▼", w - pad.r - 6, h - pad.b - 6);

    // threshold and hysteresis band
    g.strokeStyle = "#98a2b3";
    g.setLineDash([]);
    g.lineWidth = 1.4;
    g.beginPath();
    g.moveTo(pad.l, y(0));
    g.lineTo(w - pad.r, y(0));
    g.stroke();
    g.setLineDash([4, 4]);
    g.lineWidth = 1;
    for (const v of [state.smoothing.enter, -state.smoothing.enter]) {
      g.beginPath();
      g.moveTo(pad.l, y(v));
      g.lineTo(w - pad.r, y(v));
      g.stroke();
    }
    g.setLineDash([]);

    // windows without speech
    g.strokeStyle = "#b8c0cc";
    g.lineWidth = 2;
    for (const p of state.noSpeech) {
      if (p.t < tMin) continue;
      g.beginPath();
      g.moveTo(x(p.t), h - pad.b);
      g.lineTo(x(p.t), h - pad.b - 8);
      g.stroke();
    }

    // each model: smoothed line and window dots
    g.save();
    g.beginPath();
    g.rect(pad.l, pad.t - 6, w - pad.l - pad.r + 6, h - pad.t - pad.b + 12);
    g.clip();
    for (const m of state.models) {
      const pts = state.series[m.name];
      if (!pts || !pts.length || !state.selected.has(m.name)) continue;
      g.strokeStyle = m.color;
      g.lineWidth = 2.5;
      g.lineJoin = "round";
      g.beginPath();
      pts.forEach((p, i) => (i ? g.lineTo(x(p.t), y(p.smoothed)) : g.moveTo(x(p.t), y(p.smoothed))));
      g.stroke();
      for (const p of pts) {
        g.beginPath();
        if (Math.abs(p.score) > yMax) {
          // beyond the scale: a triangle at the edge, pointing the way the score went
          const edge = y(p.score), dir = p.score > 0 ? -1 : 1;
          g.moveTo(x(p.t) - 5, edge - dir * 3);
          g.lineTo(x(p.t) + 5, edge - dir * 3);
          g.lineTo(x(p.t), edge + dir * 5);
          g.closePath();
        } else {
          g.arc(x(p.t), y(p.score), p.early ? 3 : 4, 0, 2 * Math.PI);
        }
        g.fillStyle = p.early ? "#fff" : m.color;
        g.fill();
        g.strokeStyle = m.color;
        g.lineWidth = 1.5;
        g.stroke();
      }
    }
    g.restore();
  }

  // --- microphone and transports -------------------------------------------------------------

  async function getMicrophone() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw Object.assign(new Error("This browser cannot capture audio here (the page needs https or localhost)."), {
        name: "NotSupportedError",
      });
    }
    return navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false, channelCount: 1 },
      video: false,
    });
  }

  function micError(e) {
    if (e.name === "NotAllowedError" || e.name === "SecurityError" || e.name === "PermissionDeniedError") {
      showAlert(
        "Microphone access was denied",
        "voicescreen needs your microphone to screen your voice. Allow microphone access for this site in the browser's address bar or site settings, then press Start again.",
      );
    } else if (e.name === "NotFoundError" || e.name === "OverconstrainedError") {
      showAlert("No microphone found", "Connect a microphone (or pick one in your system settings) and press Start again.");
    } else if (e.name === "NotReadableError") {
      showAlert("The microphone is busy", "Another application is using the microphone. Close it and press Start again.");
    } else {
      showAlert("Cannot use the microphone", e.message || String(e));
    }
  }

  function resetRun() {
    state.series = {};
    state.noSpeech = [];
    state.latencies = [];
    state.windows = 0;
    state.skipped = 0;
    state.duration = 0;
    state.verdicts = {};
    $("verdict-score-label").textContent = "smoothed score";
    state.summary = null;
    state.streamId = null;
    $("log").textContent = "";
    $("stream-id").textContent = "";
    updateStats();
    renderLegend();
    draw();
  }

  async function start() {
    hideAlert();
    resetRun();
    setPhase("starting");
    setVerdict("listening");
    try {
      media = await getMicrophone();
    } catch (e) {
      setPhase("ready");
      setVerdict("idle");
      micError(e);
      return;
    }
    const wantWs = $("transport").value === "ws" || !window.RTCPeerConnection;
    try {
      if (wantWs) await startWebSocket();
      else await startWebRtc();
    } catch (e) {
      if (!wantWs && !e.httpStatus && !e.unreachable) {
        log("fallback", `WebRTC failed (${e.message}); using the WebSocket`, "overloaded");
        closeRtc();
        try {
          await startWebSocket();
          return;
        } catch (e2) {
          e = e2;
        }
      }
      fail(e);
    }
  }

  function fail(e) {
    teardown();
    setPhase("ready");
    setVerdict("idle");
    setStatus("ok", "Connected");
    if (e.unreachable) unreachable(e.message);
    else showAlert("Could not start the stream", e.message || String(e));
  }

  async function startWebRtc() {
    state.transport = "webrtc";
    pc = new RTCPeerConnection({ iceServers: [] });
    channel = pc.createDataChannel("events", { ordered: true });
    channel.onmessage = (e) => onMessage(JSON.parse(e.data));
    for (const track of media.getAudioTracks()) pc.addTrack(track, media);
    const connected = new Promise((resolve, reject) => {
      pc.addEventListener("connectionstatechange", () => {
        if (pc && pc.connectionState === "connected") resolve();
        if (pc && pc.connectionState === "failed") reject(new Error("the peer connection failed"));
      });
      setTimeout(() => reject(new Error("the peer connection timed out")), 15000);
    });
    connected.catch(() => {}); // awaited below; a failure before then is reported there
    await pc.setLocalDescription(await pc.createOffer());
    await new Promise((resolve) => {
      if (pc.iceGatheringState === "complete") return resolve();
      const check = () => pc.iceGatheringState === "complete" && resolve();
      pc.addEventListener("icegatheringstatechange", check);
      setTimeout(resolve, 3000); // use what was gathered so far
    });
    let r;
    try {
      r = await fetchWithTimeout("/v1/rtc/offer", {
        method: "POST",
        headers: { "Content-Type": "application/json", ...authHeaders() },
        body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer", models: [...state.selected] }),
      });
    } catch (e) {
      throw Object.assign(new Error(e.message || "network error"), { unreachable: true });
    }
    if (!r.ok) throw Object.assign(new Error(await errorText(r)), { httpStatus: r.status });
    await pc.setRemoteDescription(await r.json());
    await connected;
    pc.addEventListener("connectionstatechange", () => {
      if (pc && (pc.connectionState === "failed" || pc.connectionState === "disconnected") && state.phase !== "done") {
        showAlert("The connection to the server was lost", "The stream ended early. Press Start to try again.");
        finish();
      }
    });
    setPhase("running");
  }

  function wsUrl() {
    const url = new URL("/v1/stream", location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    if (state.token) url.searchParams.set("token", state.token);
    return url.toString();
  }

  async function startWebSocket() {
    state.transport = "websocket";
    const ctx = new AudioContext();
    await ctx.audioWorklet.addModule("/static/worklet.js");
    const source = ctx.createMediaStreamSource(media);
    const node = new AudioWorkletNode(ctx, "pcm-capture", {
      numberOfOutputs: 1,
      processorOptions: { frameSize: Math.round(ctx.sampleRate * 0.04) },
    });
    const mute = ctx.createGain();
    mute.gain.value = 0;
    source.connect(node).connect(mute).connect(ctx.destination);
    audio = { ctx, node, source };
    await new Promise((resolve, reject) => {
      ws = new WebSocket(wsUrl());
      ws.binaryType = "arraybuffer";
      ws.onopen = () => {
        ws.send(
          JSON.stringify({
            type: "start",
            sample_rate: ctx.sampleRate,
            encoding: "float32",
            channels: 1,
            models: [...state.selected],
          }),
        );
        node.port.onmessage = (e) => ws && ws.readyState === WebSocket.OPEN && ws.send(e.data);
        resolve();
      };
      ws.onerror = () => reject(Object.assign(new Error("the WebSocket could not connect"), { unreachable: true }));
      ws.onmessage = (e) => onMessage(JSON.parse(e.data));
      ws.onclose = (e) => {
        if (state.phase === "running" || state.phase === "stopping") {
          if (!state.summary) {
            showAlert(
              "The connection to the server was lost",
              e.reason ? `The server closed the stream: ${e.reason}` : "The stream ended early. Press Start to try again.",
            );
          }
          finish();
        }
      };
    });
    await ctx.resume();
    setPhase("running");
  }

  function stop() {
    setPhase("stopping");
    if (media) media.getTracks().forEach((t) => t.stop());
    if (audio) {
      audio.node.port.postMessage("flush");
      audio.source.disconnect();
    }
    const message = JSON.stringify({ type: "stop" });
    if (channel && channel.readyState === "open") channel.send(message);
    else if (ws && ws.readyState === WebSocket.OPEN) setTimeout(() => ws && ws.readyState === WebSocket.OPEN && ws.send(message), 100);
    else finish();
    // the summary normally arrives within a few windows' scoring time
    stopTimer = setTimeout(() => {
      if (state.phase === "stopping") {
        showAlert("No summary from the server", "The stream was stopped without a final summary.", "warn");
        finish();
      }
    }, 20000);
  }

  function closeRtc() {
    if (channel) channel.onmessage = null;
    if (pc) pc.close();
    pc = null;
    channel = null;
  }

  function teardown() {
    clearTimeout(stopTimer);
    if (media) media.getTracks().forEach((t) => t.stop());
    media = null;
    closeRtc();
    if (ws) {
      ws.onclose = null;
      if (ws.readyState <= WebSocket.OPEN) ws.close();
      ws = null;
    }
    if (audio) {
      audio.ctx.close();
      audio = null;
    }
  }

  function finish() {
    teardown();
    setPhase("done");
    setStatus("ok", "Connected · stream ended");
  }

  $("start").addEventListener("click", () => {
    if (state.phase === "running") stop();
    else if (state.phase === "ready" || state.phase === "done") start();
  });
  if (params.get("transport") === "ws") $("transport").value = "ws";
  window.addEventListener("resize", draw);
  setPhase("loading");
  loadServer();
})();
