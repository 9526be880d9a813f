// The eformws staff console, and a worked example of a browser client: the session id is
// kept in a cookie, status is polled over HTTP, events are followed over WebSocket.
//
// What it uses, all on this origin (docs/protocol.md):
//   GET  /api/websocket/health     any valid session: does the cookie log us in?
//   GET  /api/websocket/status     connections, rooms, nodes, latency percentiles
//   WS   /ws/events                every event as it happens (the cookie authenticates;
//                                  `?since=<seq>&epoch=<epoch>` resumes after a reconnect)
//   POST /api/websocket/broadcast  admins only; others are shown the server's message
// Data from the server is only ever written with textContent, never as HTML.
"use strict";

(() => {
  const COOKIE = "sessionId";
  const STATUS_INTERVAL_MS = 1000;
  const MAX_EVENTS = 500; // rows kept; the oldest go first
  const MAX_POINTS = 120; // latency samples on the chart (two minutes at one a second)
  const RECONNECT_MAX_MS = 10000;
  // RFC 6265 cookie-octets: what a cookie value may hold without quoting (no ; , space " \).
  const COOKIE_VALUE = /^[\x21\x23-\x2B\x2D-\x3A\x3C-\x5B\x5D-\x7E]{1,512}$/;
  const SERIES = [
    {key: "median", color: "#2f6fde"},
    {key: "p95", color: "#e08a00"},
    {key: "p99", color: "#d2344a"},
  ];

  const $ = (id) => document.getElementById(id);
  const state = {
    running: false,
    statusTimer: null,
    socket: null,
    reconnectTimer: null,
    reconnectDelay: 1000,
    lastSeq: null, // the newest structured event's seq: where a reconnect resumes ...
    lastEpoch: null, // ... in this event log
    seenIds: new Set(), // ids of structured events shown (a replay may repeat some)
    events: [], // {message, receivedAt}, oldest first
    types: new Set(),
    latency: [], // {t, median, p95, p99}
    namespaces: [],
  };

  // -- the session cookie ------------------------------------------------------------

  function cookieAttributes() {
    return "; Path=/; SameSite=Strict" + (location.protocol === "https:" ? "; Secure" : "");
  }

  function setSessionCookie(value) {
    document.cookie = `${COOKIE}=${value}${cookieAttributes()}`;
  }

  function clearSessionCookie() {
    document.cookie = `${COOKIE}=; Max-Age=0${cookieAttributes()}`;
  }

  /** null when the cookies sent log us in, else {status, message}: the server's reason. */
  async function checkSession() {
    let response;
    try {
      response = await fetch("/api/websocket/health", {cache: "no-store"});
    } catch (error) {
      return {status: 0, message: "The server cannot be reached."};
    }
    if (response.ok) return null;
    const body = await response.json().catch(() => ({}));
    return {status: response.status, message: body.message || `HTTP ${response.status}`};
  }

  async function logIn(event) {
    event.preventDefault();
    const input = $("session-id");
    const value = input.value.trim();
    input.value = ""; // not kept in the page
    if (!COOKIE_VALUE.test(value)) {
      showLogin("That is not a session id.");
      return;
    }
    setSessionCookie(value);
    const problem = await checkSession();
    if (problem) {
      clearSessionCookie();
      showLogin(problem.message);
      return;
    }
    start();
  }

  function logOut() {
    clearSessionCookie();
    stop();
    showLogin("");
  }

  function showLogin(message) {
    $("login").hidden = false;
    $("app").hidden = true;
    $("logout").hidden = true;
    $("login-error").textContent = message;
    setLink("signed out", "off");
    $("session-id").focus();
  }

  // -- running ----------------------------------------------------------------------

  function start() {
    state.running = true;
    $("login").hidden = true;
    $("app").hidden = false;
    $("logout").hidden = false;
    $("login-error").textContent = "";
    pollStatus();
    connectEvents();
  }

  function stop() {
    state.running = false;
    clearTimeout(state.statusTimer);
    clearTimeout(state.reconnectTimer);
    if (state.socket) state.socket.close(1000, "Console closed");
    state.socket = null;
  }

  function setLink(text, kind) {
    const pill = $("link-state");
    pill.textContent = text;
    pill.className = `pill ${kind}`;
  }

  // -- status: connections, nodes, rooms, latency ----------------------------------

  async function pollStatus() {
    if (!state.running) return;
    try {
      const response = await fetch("/api/websocket/status", {cache: "no-store"});
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      renderStatus(await response.json());
      $("updated").textContent = `updated ${clock(new Date())}`;
    } catch (error) {
      $("updated").textContent = `status unavailable (${error.message})`;
    }
    if (state.running) state.statusTimer = setTimeout(pollStatus, STATUS_INTERVAL_MS);
  }

  function renderStatus(status) {
    $("total").textContent = status.total_connections;
    const namespaceRows = Object.entries(status.namespaces || {});
    for (const [path, count] of Object.entries(status.endpoints || {})) namespaceRows.push([`${path} (WAMP)`, count]);
    fillTable("namespaces", namespaceRows);

    const nodes = status.nodes || [];
    fillTable(
      "nodes",
      nodes.length
        ? nodes.map((node) => [
            node.id + (node.stale ? " (Redis unreachable)" : ""),
            node.connections,
            perNamespace(node.namespaces),
            node.last_seen ? clock(new Date(node.last_seen)) : "",
          ])
        : [[
            "this process (no Redis)",
            status.total_connections,
            perNamespace(status.namespaces),
            status.timestamp ? clock(new Date(status.timestamp)) : "",
          ]],
    );

    const rooms = [];
    for (const [path, members] of Object.entries(status.rooms || {})) {
      for (const [room, size] of Object.entries(members)) rooms.push([path, room, size]);
    }
    fillTable("rooms", rooms.length ? rooms : [["", "no rooms", ""]]);

    setNamespaces(Object.keys(status.namespaces || {}));

    const m = status.latency_metrics || {};
    state.latency.push({t: Date.now(), median: m.median || 0, p95: m.p95 || 0, p99: m.p99 || 0});
    if (state.latency.length > MAX_POINTS) state.latency.shift();
    for (const {key} of SERIES) $(`lat-${key}`).textContent = (m[key] || 0).toFixed(2);
    drawChart();
  }

  /** "/ws/lockers 3, /ws/events 1": the namespaces that have connections. */
  function perNamespace(counts) {
    return Object.entries(counts || {}).filter(([, n]) => n).map(([path, n]) => `${path} ${n}`).join(", ");
  }

  /** Replace a table's body with rows of cells, as text; numbers are right-aligned. */
  function fillTable(id, rows) {
    const body = document.querySelector(`#${id} tbody`);
    const fresh = document.createElement("tbody");
    for (const cells of rows) {
      const tr = fresh.insertRow();
      for (const value of cells) {
        const td = tr.insertCell();
        td.textContent = value;
        if (typeof value === "number") td.className = "num";
      }
    }
    body.replaceWith(fresh);
  }

  /** Keep the namespace pickers (broadcast, filter) in step with the server's list. */
  function setNamespaces(paths) {
    if (paths.join("\n") === state.namespaces.join("\n")) return;
    state.namespaces = paths;
    for (const [id, first] of [["bc-namespace", null], ["f-namespace", "any"]]) {
      const select = $(id);
      const chosen = select.value;
      select.replaceChildren();
      if (first) select.add(new Option(first, ""));
      for (const path of paths) select.add(new Option(path, path));
      if ([...select.options].some((o) => o.value === chosen)) select.value = chosen;
    }
  }

  // -- the latency chart: a canvas, drawn by hand ------------------------------------

  function drawChart() {
    const canvas = $("latency-chart");
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || canvas.width;
    const height = canvas.clientHeight || canvas.height;
    if (canvas.width !== Math.round(width * ratio)) canvas.width = Math.round(width * ratio);
    if (canvas.height !== Math.round(height * ratio)) canvas.height = Math.round(height * ratio);
    const g = canvas.getContext("2d");
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, width, height);

    const pad = {left: 40, right: 14, top: 10, bottom: 24};
    const plotW = width - pad.left - pad.right;
    const plotH = height - pad.top - pad.bottom;
    const points = state.latency;
    const [top, divisions] = niceScale(Math.max(1, ...points.map((p) => p.p99)));
    const now = Date.now();
    const span = MAX_POINTS * STATUS_INTERVAL_MS;
    const x = (t) => pad.left + plotW * (1 - (now - t) / span);
    const y = (v) => pad.top + plotH * (1 - v / top);

    g.font = "11px system-ui, sans-serif";
    g.lineWidth = 1;
    g.strokeStyle = "#d9dee7";
    g.fillStyle = "#5b6475";
    g.textAlign = "right";
    g.textBaseline = "middle";
    for (let i = 0; i <= divisions; i += 1) {
      const v = (top * i) / divisions;
      g.beginPath();
      g.moveTo(pad.left, Math.round(y(v)) + 0.5);
      g.lineTo(width - pad.right, Math.round(y(v)) + 0.5);
      g.stroke();
      g.fillText(formatMs(v), pad.left - 6, y(v));
    }
    g.textAlign = "center";
    g.textBaseline = "top";
    for (let s = 0; s <= span / 1000; s += 30) {
      g.fillText(s === 0 ? "now" : `-${s}s`, x(now - s * 1000), height - pad.bottom + 6);
    }

    g.save();
    g.beginPath();
    g.rect(pad.left, pad.top - 2, plotW, plotH + 4);
    g.clip();
    g.lineWidth = 2;
    g.lineJoin = "round";
    for (const {key, color} of SERIES) {
      g.strokeStyle = color;
      g.beginPath();
      points.forEach((p, i) => (i ? g.lineTo(x(p.t), y(p[key])) : g.moveTo(x(p.t), y(p[key]))));
      g.stroke();
    }
    g.restore();
  }

  /** [top, divisions]: the axis top is 1, 2 or 5 times a power of ten, at least `value`,
   *  cut into steps that are round numbers too (1 → 5 × 0.2, 2 → 4 × 0.5, 5 → 5 × 1). */
  function niceScale(value) {
    const power = 10 ** Math.floor(Math.log10(value));
    for (const [step, divisions] of [[1, 5], [2, 4], [5, 5], [10, 5]]) {
      if (step * power >= value) return [step * power, divisions];
    }
    return [10 * power, 5];
  }

  function formatMs(v) {
    return String(Number(v.toPrecision(3)));
  }

  // -- the event stream ------------------------------------------------------------

  function connectEvents() {
    if (!state.running) return;
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    let since = "";
    if (state.lastSeq) {
      since = `?since=${encodeURIComponent(state.lastSeq)}`;
      if (state.lastEpoch) since += `&epoch=${encodeURIComponent(state.lastEpoch)}`;
    }
    const socket = new WebSocket(`${scheme}//${location.host}/ws/events${since}`);
    state.socket = socket;
    setLink("connecting", "warn");
    socket.onmessage = (e) => {
      let message;
      try {
        message = JSON.parse(e.data);
      } catch (error) {
        return;
      }
      received(message);
    };
    socket.onclose = (e) => {
      if (state.socket !== socket) return;
      state.socket = null;
      if (!state.running) return;
      if (e.code === 1008) {
        // Authentication required / failed, Forbidden, Session expired: log in again.
        clearSessionCookie();
        stop();
        showLogin(e.reason || "The server closed the event stream.");
        return;
      }
      setLink(`reconnecting (${e.code})`, "warn");
      state.reconnectTimer = setTimeout(connectEvents, state.reconnectDelay);
      state.reconnectDelay = Math.min(state.reconnectDelay * 2, RECONNECT_MAX_MS);
    };
  }

  function received(message) {
    switch (message.type) {
      case "connection":
        state.reconnectDelay = 1000;
        setLink("live", "on");
        // Without ?since=, where this connection starts: a later reconnect resumes from it.
        if (message.data && message.data.seq !== undefined && !state.lastSeq) {
          state.lastSeq = message.data.seq;
          state.lastEpoch = message.data.epoch;
        }
        return;
      case "room_joined":
      case "room_left":
      case "pong":
        return;
      case "resumed":
        if (message.data && message.data.seq) {
          state.lastSeq = message.data.seq;
          state.lastEpoch = message.data.epoch;
        }
        if (message.data && message.data.recovered === false) {
          notice("Some events were missed while disconnected and could not be recovered.");
        }
        return;
      case "error":
        notice(`error: ${message.data && message.data.message}`);
        return;
      default:
        break;
    }
    if (message.id && message.seq !== undefined) {
      if (state.seenIds.has(message.id)) return;
      state.seenIds.add(message.id);
      state.lastSeq = message.seq;
      state.lastEpoch = message.epoch;
    }
    addEvent(message);
  }

  function notice(text) {
    addEvent({type: "notice", timestamp: new Date().toISOString(), data: {message: text}});
  }

  function addEvent(message) {
    const entry = {message, receivedAt: Date.now()};
    state.events.push(entry);
    while (state.events.length > MAX_EVENTS) {
      const old = state.events.shift();
      if (old.row) old.row.remove();
      if (old.message.id) state.seenIds.delete(old.message.id);
    }
    if (!state.types.has(message.type)) {
      state.types.add(message.type);
      $("known-types").append(new Option(message.type));
    }
    if (!$("f-pause").checked && matches(message)) prependRow(entry);
    countEvents();
  }

  function filters() {
    return {
      type: $("f-type").value.trim().toLowerCase(),
      namespace: $("f-namespace").value,
      room: $("f-room").value.trim().toLowerCase(),
      text: $("f-text").value.trim().toLowerCase(),
    };
  }

  function matches(message, f = filters()) {
    if (f.type && !String(message.type).toLowerCase().includes(f.type)) return false;
    if (f.namespace && message.namespace !== f.namespace) return false;
    if (f.room && !String(message.room || "").toLowerCase().includes(f.room)) return false;
    if (f.text && !JSON.stringify(message.data ?? null).toLowerCase().includes(f.text)) return false;
    return true;
  }

  function prependRow(entry) {
    const {message} = entry;
    const row = document.createElement("tr");
    row.dataset.type = message.type;
    row.dataset.received = String(entry.receivedAt);
    if (message.seq !== undefined) row.dataset.seq = message.seq;
    const data = JSON.stringify(message.data ?? null);
    const cells = [
      message.timestamp ? clock(new Date(message.timestamp)) : "",
      message.seq ?? "",
      message.type,
      message.namespace ?? "",
      message.room ?? "",
      data,
    ];
    for (const value of cells) row.insertCell().textContent = value;
    row.cells[2].className = "type";
    row.cells[5].className = "data";
    row.cells[5].title = data;
    if (message.type === "notice") row.className = "notice";
    entry.row = row;
    const body = document.querySelector("#events tbody");
    body.insertBefore(row, body.firstChild);
  }

  /** Show again every kept event that passes the filters (after a filter change). */
  function rerender() {
    const body = document.querySelector("#events tbody");
    body.replaceChildren();
    const f = filters();
    for (const entry of state.events) {
      entry.row = null;
      if (matches(entry.message, f)) prependRow(entry);
    }
    countEvents();
  }

  function countEvents() {
    const shown = document.querySelectorAll("#events tbody tr").length;
    const paused = $("f-pause").checked ? ", paused" : "";
    $("event-count").textContent = `${shown} of ${state.events.length}${paused}`;
  }

  function clearEvents() {
    for (const entry of state.events) if (entry.row) entry.row.remove();
    state.events = [];
    countEvents();
  }

  // -- broadcast ---------------------------------------------------------------------

  async function sendBroadcast(event) {
    event.preventDefault();
    const result = $("broadcast-result");
    result.className = "";
    let data;
    try {
      data = JSON.parse($("bc-data").value.trim() || "{}");
    } catch (error) {
      showResult("error", "Data is not valid JSON.");
      return;
    }
    if (data === null || typeof data !== "object" || Array.isArray(data)) {
      showResult("error", "Data must be a JSON object.");
      return;
    }
    const body = {namespace: $("bc-namespace").value, event: $("bc-event").value.trim(), data};
    const room = $("bc-room").value.trim();
    if (room) body.room = room;
    try {
      const response = await fetch("/api/websocket/broadcast", {
        method: "POST",
        headers: {"Content-Type": "application/json"},
        body: JSON.stringify(body),
        cache: "no-store",
      });
      const reply = await response.json().catch(() => ({}));
      if (response.ok) {
        showResult("ok", `${reply.message} (${reply.delivered} connection${reply.delivered === 1 ? "" : "s"} on this node)`);
      } else {
        showResult("error", `${response.status} ${reply.error || ""}: ${reply.message || response.statusText}`);
      }
    } catch (error) {
      showResult("error", `The server cannot be reached (${error.message}).`);
    }
  }

  function showResult(kind, text) {
    const result = $("broadcast-result");
    result.className = kind;
    result.textContent = text;
  }

  // -- helpers and wiring --------------------------------------------------------------

  function clock(date) {
    const two = (n) => String(n).padStart(2, "0");
    return `${two(date.getHours())}:${two(date.getMinutes())}:${two(date.getSeconds())}.${String(date.getMilliseconds()).padStart(3, "0")}`;
  }

  async function boot() {
    $("login-form").addEventListener("submit", logIn);
    $("logout").addEventListener("click", logOut);
    $("broadcast-form").addEventListener("submit", sendBroadcast);
    for (const id of ["f-type", "f-room", "f-text"]) $(id).addEventListener("input", rerender);
    $("f-namespace").addEventListener("change", rerender);
    $("f-pause").addEventListener("change", rerender);
    $("f-clear").addEventListener("click", clearEvents);
    window.addEventListener("resize", drawChart);
    // Already logged in (our cookie, or the panel's `session` cookie)? Then go straight in.
    const problem = await checkSession();
    if (problem === null) {
      start();
    } else if (problem.status === 401) {
      clearSessionCookie(); // unknown, revoked or expired: forget it
      showLogin(problem.message === "Authentication required" ? "" : "Your session has ended; log in again.");
    } else {
      showLogin(problem.message);
    }
  }

  boot();
})();
