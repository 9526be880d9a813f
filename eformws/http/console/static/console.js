// The eformws staff console, and a worked example of a browser client: the session id is
// kept in a cookie, status is polled over HTTP, events are followed over WebSocket.
//
// What it uses, all on this origin (docs/protocol.md):
//   GET    /api/websocket/health          any valid session: does the cookie log us in?
//   GET    /api/websocket/session         who we are and what our role may do
//   GET    /api/websocket/status          connections, rooms, nodes, latency percentiles
//   WS     /ws/events                     every event as it happens (the cookie authenticates;
//                                         `?since=<seq>&epoch=<epoch>` resumes after a reconnect)
//   POST   /api/websocket/broadcast       roles in auth.broadcast_roles
//   POST   /api/websocket/events          the same roles: a structured event, validated by the server
//   GET    /api/websocket/sessions        roles in auth.session_admin_roles: references, never ids
//   POST   /api/websocket/sessions        ... create (the id is answered once)
//   DELETE /api/websocket/sessions/<ref>  ... revoke
// Data from the server is only ever written with textContent, never as HTML.
"use strict";

(() => {
  const COOKIE = "sessionId";
  const STATUS_INTERVAL_MS = 1000;
  const SESSIONS_INTERVAL_MS = 10000;
  const MAX_EVENTS = 500; // rows kept; the oldest go first
  const CHART_SPAN_MS = 120000; // the latency chart shows the last two minutes
  const RECONNECT_MAX_MS = 10000;
  const CONFIRM_MS = 5000; // how long a "Confirm revoke" button waits for its second click
  const MAX_TYPES = 200; // event types the Type filter suggests (any name can still be typed)
  // RFC 6265 cookie-octets: what a cookie value may hold without quoting (no ; , space " \).
  const COOKIE_VALUE = /^[\x21\x23-\x2B\x2D-\x3A\x3C-\x5B\x5D-\x7E]{1,512}$/;
  // The status's latency_metrics keys, as the chart and legend name them.
  const SERIES = [["p50", "median"], ["p95", "p95"], ["p99", "p99"]];
  const SVG = "http://www.w3.org/2000/svg";

  const $ = (id) => document.getElementById(id);
  const state = {
    running: false,
    me: null, // GET /api/websocket/session: {user_id, role, kiosk_id, may: {...}}
    statusTimer: null,
    sessionsTimer: null,
    socket: null,
    reconnectTimer: null,
    reconnectDelay: 1000,
    lastSeq: null, // the newest structured event's seq: where a reconnect resumes ...
    lastEpoch: null, // ... in this event log
    seenIds: new Set(), // ids of structured events shown (a replay may repeat some)
    events: [], // {message, receivedAt, row, detail}, oldest first
    rows: new WeakMap(), // row -> its entry
    types: new Set(),
    latency: [], // {t, p50, p95, p99} or {t, gap: true}, oldest first
    namespaces: [],
    sessions: [],
    armed: null, // {ref, until}: the session whose Revoke was clicked once, waiting for the second click
  };

  // -- requests -----------------------------------------------------------------------

  /** {ok, status, body}: a JSON request on this origin; status 0 when unreachable. */
  async function request(method, path, body) {
    const init = {method, cache: "no-store", headers: {}};
    if (method !== "GET") init.headers["Content-Type"] = "application/json"; // what a cookie-authenticated change must send
    if (body !== undefined) init.body = JSON.stringify(body);
    let response;
    try {
      response = await fetch(path, init);
    } catch (error) {
      return {ok: false, status: 0, body: {message: "The server cannot be reached."}};
    }
    const answer = await response.json().catch(() => ({}));
    return {ok: response.ok, status: response.status, body: answer};
  }

  /** "403 Forbidden: This session may not do that" */
  function problem(answer) {
    if (answer.status === 0) return answer.body.message;
    return `${answer.status} ${answer.body.error || ""}: ${answer.body.message || ""}`;
  }

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
    const answer = await request("GET", "/api/websocket/health");
    if (answer.ok) return null;
    return {status: answer.status, message: answer.body.message || `HTTP ${answer.status}`};
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
    const refused = await checkSession();
    if (refused) {
      clearSessionCookie();
      showLogin(refused.message);
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
    $("who").hidden = true;
    $("login-error").textContent = message;
    setLink("signed out", "off");
    $("session-id").focus();
  }

  // -- running ----------------------------------------------------------------------

  async function start() {
    state.running = true;
    $("login").hidden = true;
    $("app").hidden = false;
    $("logout").hidden = false;
    $("login-error").textContent = "";
    pollStatus();
    connectEvents();
    await loadMe();
  }

  function stop() {
    state.running = false;
    state.me = null;
    clearTimeout(state.statusTimer);
    clearTimeout(state.sessionsTimer);
    clearTimeout(state.reconnectTimer);
    if (state.socket) state.socket.close(1000, "Console closed");
    state.socket = null;
    forgetWhatWasSeen();
  }

  /** The next person to log in on this page sees nothing of this session's: not its
   *  events (redacted for its role), nor its session list, nor a new session's id. */
  function forgetWhatWasSeen() {
    clearEvents();
    state.seenIds.clear();
    state.lastSeq = state.lastEpoch = null;
    state.types.clear();
    $("known-types").replaceChildren();
    state.sessions = [];
    state.armed = null;
    $("sessions").replaceChildren();
    forgetNewSession();
    for (const id of ["session-result", "broadcast-result", "emit-result"]) showResult(id, "", "");
  }

  /** Who we are; the cards our role cannot use stay hidden. */
  async function loadMe() {
    const answer = await request("GET", "/api/websocket/session");
    if (!state.running) return;
    state.me = answer.ok ? answer.body : {may: {}};
    const may = state.me.may || {};
    for (const card of document.querySelectorAll("[data-needs]")) card.hidden = !may[card.dataset.needs];
    if (answer.ok) {
      $("who").textContent = `${state.me.user_id} · ${state.me.role}`;
      $("who").hidden = false;
    }
    if (may.manage_sessions) loadSessions();
  }

  function setLink(text, kind) {
    const pill = $("link-state");
    pill.textContent = text;
    pill.className = `pill ${kind}`;
  }

  // -- status: connections, nodes, rooms, latency ----------------------------------

  async function pollStatus() {
    if (!state.running) return;
    const answer = await request("GET", "/api/websocket/status");
    if (!state.running) return;
    if (answer.ok) {
      $("app").classList.remove("stale");
      renderStatus(answer.body);
      $("updated").textContent = `updated ${clock(new Date())}`;
    } else {
      // Keep the last numbers, greyed; the chart gets a gap, never a made-up zero.
      if (!$("app").classList.contains("stale")) {
        $("updated").textContent = `status unavailable since ${clock(new Date())} (${answer.status ? `HTTP ${answer.status}` : "unreachable"})`;
      }
      $("app").classList.add("stale");
      addLatency({t: Date.now(), gap: true});
    }
    state.statusTimer = setTimeout(pollStatus, STATUS_INTERVAL_MS);
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
            node.last_seen ? clock(new Date(node.last_seen)).slice(0, 8) : "",
          ])
        : [[
            "this process (no Redis)",
            status.total_connections,
            perNamespace(status.namespaces),
            status.timestamp ? clock(new Date(status.timestamp)).slice(0, 8) : "",
          ]],
    );

    const rooms = [];
    for (const [path, members] of Object.entries(status.rooms || {})) {
      for (const [room, size] of Object.entries(members)) rooms.push([path, room, size]);
    }
    fillTable("rooms", rooms.length ? rooms : [["", "no rooms", ""]]);

    setNamespaces(Object.keys(status.namespaces || {}));

    // An empty window (no deliveries yet) has nothing to plot: a gap, and "–".
    const m = status.latency_metrics || {};
    const point = {t: Date.now()};
    for (const [key, field] of SERIES) point[key] = Number(m[field]) || 0;
    if (!point.p99) point.gap = true;
    for (const [key] of SERIES) $(`lat-${key}`).textContent = point.gap ? "–" : point[key].toFixed(2);
    addLatency(point);
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

  // -- the latency chart: SVG, log scale -------------------------------------------------

  function addLatency(point) {
    state.latency.push(point);
    const oldest = point.t - CHART_SPAN_MS;
    while (state.latency.length && state.latency[0].t < oldest) state.latency.shift();
    drawChart();
  }

  /** [bottom, top] of the log scale in whole decades, at least two: a function of the
   *  window's values only, so the axis moves when a value leaves its decades, not with
   *  every sample, and narrows again only once the whole window fits. */
  function logRange(points) {
    const values = points.filter((p) => !p.gap).flatMap((p) => SERIES.map(([key]) => p[key])).filter((v) => v > 0);
    if (!values.length) return [0.1, 10];
    let low = Math.floor(Math.log10(Math.min(...values)));
    let high = Math.floor(Math.log10(Math.max(...values))) + 1;
    low = Math.max(low, -2); // 0.01 ms: finer than the server reports
    if (high <= low) high = low + 1;
    if (high - low < 2) low = Math.max(-2, high - 2);
    if (high - low < 2) high = low + 2;
    return [decade(low), decade(high)];
  }

  function decade(power) {
    return Number((10 ** power).toPrecision(1));
  }

  function svgElement(name, attributes) {
    const element = document.createElementNS(SVG, name);
    for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
    return element;
  }

  function drawChart() {
    const svg = $("latency-chart");
    const width = svg.clientWidth || 400;
    const height = svg.clientHeight || 200;
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    const pad = {left: 44, right: 10, top: 8, bottom: 22};
    const plotW = width - pad.left - pad.right;
    const plotH = height - pad.top - pad.bottom;
    const points = state.latency;
    const [bottom, top] = logRange(points);
    svg.dataset.bottom = bottom;
    svg.dataset.top = top;
    const now = points.length ? points[points.length - 1].t : Date.now();
    const x = (t) => pad.left + plotW * (1 - (now - t) / CHART_SPAN_MS);
    const logBottom = Math.log10(bottom);
    const span = Math.log10(top) - logBottom;
    const y = (v) => pad.top + plotH * (1 - (Math.log10(Math.min(top, Math.max(bottom, v))) - logBottom) / span);

    const parts = [];
    for (let power = Math.round(logBottom); power <= Math.round(Math.log10(top)); power += 1) {
      const value = decade(power);
      const at = Math.round(y(value)) + 0.5;
      parts.push(svgElement("line", {class: "grid", x1: pad.left, x2: width - pad.right, y1: at, y2: at}));
      const label = svgElement("text", {x: pad.left - 6, y: at + 4, "text-anchor": "end"});
      label.textContent = value >= 1000 ? `${value / 1000} s` : String(value);
      parts.push(label);
    }
    for (let s = 0; s <= CHART_SPAN_MS / 1000; s += 30) {
      const label = svgElement("text", {x: x(now - s * 1000), y: height - 6, "text-anchor": "middle"});
      label.textContent = s === 0 ? "now" : `-${s}s`;
      parts.push(label);
    }
    // A line per percentile, broken wherever a sample is missing (a gap, or a poll that
    // came late, as in a background tab): nothing is drawn that was not measured.
    for (const [key] of SERIES) {
      let d = "";
      let previous = null;
      for (const p of points) {
        if (p.gap) {
          previous = null;
          continue;
        }
        const joined = previous && p.t - previous.t <= 2.5 * STATUS_INTERVAL_MS;
        // A segment's first point is drawn as a dot (a zero-length line with round caps).
        d += `${joined ? "L" : "M"}${x(p.t).toFixed(1)} ${y(p[key]).toFixed(1)} ${joined ? "" : "l0 0 "}`;
        previous = p;
      }
      parts.push(svgElement("path", {class: key, d: d.trim()}));
    }
    if (!points.some((p) => !p.gap)) {
      const empty = svgElement("text", {x: pad.left + plotW / 2, y: pad.top + plotH / 2, "text-anchor": "middle"});
      empty.textContent = "no deliveries measured yet";
      parts.push(empty);
    }
    svg.replaceChildren(...parts);
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
        // Authentication required / failed, Forbidden, Session expired / revoked: log in again.
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
    const entry = {message, receivedAt: Date.now(), row: null, detail: null};
    state.events.push(entry);
    while (state.events.length > MAX_EVENTS) {
      const old = state.events.shift();
      removeRow(old);
      if (old.message.id) state.seenIds.delete(old.message.id);
    }
    if (!state.types.has(message.type) && state.types.size < MAX_TYPES) {
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
    row.className = message.type === "notice" ? "event notice" : "event";
    row.tabIndex = 0;
    row.setAttribute("aria-expanded", "false");
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
    row.cells[1].className = "opt";
    row.cells[2].className = "type";
    row.cells[3].className = "opt";
    row.cells[4].className = "opt";
    row.cells[5].className = "data";
    entry.row = row;
    state.rows.set(row, entry);
    const body = document.querySelector("#events tbody");
    body.insertBefore(row, body.firstChild);
  }

  function removeRow(entry) {
    if (entry.row) entry.row.remove();
    if (entry.detail) entry.detail.remove();
    entry.row = entry.detail = null;
  }

  /** A row's full message as indented JSON below it, with a copy button; again to close. */
  function toggleDetail(entry) {
    if (entry.detail) {
      entry.detail.remove();
      entry.detail = null;
      entry.row.setAttribute("aria-expanded", "false");
      return;
    }
    const detail = document.createElement("tr");
    detail.className = "detail";
    const cell = detail.insertCell();
    cell.colSpan = 6;
    const json = document.createElement("pre");
    json.textContent = JSON.stringify(entry.message, null, 2);
    const copyButton = document.createElement("button");
    copyButton.type = "button";
    copyButton.className = "quiet copy";
    copyButton.textContent = "Copy JSON";
    copyButton.addEventListener("click", () => copy(json.textContent, copyButton));
    cell.append(json, copyButton);
    entry.row.after(detail);
    entry.detail = detail;
    entry.row.setAttribute("aria-expanded", "true");
  }

  function eventRowAction(event) {
    if (event.type === "keydown" && event.key !== "Enter" && event.key !== " ") return;
    const row = event.target.closest("tr.event");
    const entry = row && state.rows.get(row);
    if (!entry) return;
    if (event.type === "keydown") event.preventDefault();
    toggleDetail(entry);
  }

  /** Show again every kept event that passes the filters (after a filter change). */
  function rerender() {
    const body = document.querySelector("#events tbody");
    body.replaceChildren();
    const f = filters();
    for (const entry of state.events) {
      entry.row = entry.detail = null;
      if (matches(entry.message, f)) prependRow(entry);
    }
    countEvents();
  }

  function countEvents() {
    const shown = document.querySelectorAll("#events tbody tr.event").length;
    const paused = $("f-pause").checked ? ", paused" : "";
    $("event-count").textContent = `${shown} of ${state.events.length}${paused}`;
  }

  function clearEvents() {
    for (const entry of state.events) removeRow(entry);
    state.events = [];
    countEvents();
  }

  // -- broadcast ---------------------------------------------------------------------

  async function sendBroadcast(event) {
    event.preventDefault();
    let data;
    try {
      data = JSON.parse($("bc-data").value.trim() || "{}");
    } catch (error) {
      showResult("broadcast-result", "error", "Data is not valid JSON.");
      return;
    }
    if (data === null || typeof data !== "object" || Array.isArray(data)) {
      showResult("broadcast-result", "error", "Data must be a JSON object.");
      return;
    }
    const body = {namespace: $("bc-namespace").value, event: $("bc-event").value.trim(), data};
    const room = $("bc-room").value.trim();
    if (room) body.room = room;
    const answer = await request("POST", "/api/websocket/broadcast", body);
    if (answer.ok) {
      const n = answer.body.delivered;
      showResult("broadcast-result", "ok", `${answer.body.message} (${n} connection${n === 1 ? "" : "s"} on this node)`);
    } else {
      showResult("broadcast-result", "error", problem(answer));
    }
  }

  function showResult(id, kind, text) {
    const result = $(id);
    result.className = kind;
    result.textContent = text;
  }

  // -- emit: the five event types, validated by the server -----------------------------

  /** A valid example of each type's data (docs/events.md), times set to now. */
  function templates() {
    const now = new Date().toISOString();
    return {
      locker_state_changed: {lockerId: "kiosk-1:7", oldState: "closed", newState: "open", kioskId: "kiosk-1",
        userId: "user-42", reason: "assign"},
      help_requested: {id: 1001, kiosk_id: "kiosk-1", category: "hardware_problem", status: "open",
        created_at: now, priority: "medium", locker_no: 7, note: "door stuck"},
      help_status_updated: {id: 1001, old_status: "open", new_status: "assigned", updated_at: now, agent_id: "staff-1"},
      command_applied: {
        command: {id: "cmd-1", type: "open", issued_by: "staff-1", issued_at: now, lockerId: "kiosk-1:7", kioskId: "kiosk-1"},
        result: {success: true, timestamp: now, execution_time_ms: 120},
      },
      system_status: {component: "gateway", status: "online", health_score: 98, message: "all good"},
    };
  }

  function fillTemplate() {
    $("em-data").value = JSON.stringify(templates()[$("em-type").value], null, 2);
    fieldError("em-data", "");
  }

  /** The message under a field, and the field marked invalid (or both cleared). */
  function fieldError(id, message) {
    $(`${id}-error`).textContent = message;
    if (message) $(id).setAttribute("aria-invalid", "true");
    else $(id).removeAttribute("aria-invalid");
  }

  /** Select the first `"name"` of a dotted error path (data.command.type → "type") in the
   *  JSON text, so the field the server refused is where the cursor is. */
  function pointAt(textarea, path) {
    const name = String(path || "").split(".").pop();
    const at = name ? textarea.value.indexOf(`"${name}"`) : -1;
    textarea.focus();
    if (at >= 0) textarea.setSelectionRange(at, at + name.length + 2);
  }

  async function emitEvent(event) {
    event.preventDefault();
    const textarea = $("em-data");
    showResult("emit-result", "", "");
    let data;
    try {
      data = JSON.parse(textarea.value);
    } catch (error) {
      fieldError("em-data", `Not valid JSON: ${error.message}`);
      textarea.focus();
      return;
    }
    if (data === null || typeof data !== "object" || Array.isArray(data)) {
      fieldError("em-data", "Data must be a JSON object.");
      return;
    }
    fieldError("em-data", "");
    const answer = await request("POST", "/api/websocket/events", {type: $("em-type").value, data});
    if (answer.ok) {
      showResult("emit-result", "ok", `Stored as seq ${answer.body.seq} and delivered.`);
    } else if (answer.status === 400) {
      fieldError("em-data", answer.body.message || "The server refused this event.");
      pointAt(textarea, answer.body.field);
    } else {
      showResult("emit-result", "error", problem(answer));
    }
  }

  // -- sessions: list by reference, create (the id shown once), revoke ------------------

  async function loadSessions() {
    clearTimeout(state.sessionsTimer);
    if (!state.running || !(state.me && state.me.may && state.me.may.manage_sessions)) return;
    const answer = await request("GET", "/api/websocket/sessions");
    if (!state.running) return;
    if (answer.ok) {
      state.sessions = answer.body.sessions || [];
      renderSessions();
    } else {
      showResult("session-result", "error", `Sessions could not be listed: ${problem(answer)}`);
    }
    state.sessionsTimer = setTimeout(loadSessions, SESSIONS_INTERVAL_MS);
  }

  function renderSessions() {
    const all = $("ss-ended").checked;
    const shown = state.sessions.filter((s) => all || s.state === "live");
    const live = state.sessions.filter((s) => s.state === "live").length;
    $("sessions-count").textContent = `${live} live`;
    const items = shown.map((session) => {
      const item = document.createElement("li");
      item.dataset.ref = session.ref;
      const parts = [
        ["code", session.ref],
        ["span user", session.user_id],
        ["span", session.role + (session.kiosk_id ? ` · ${session.kiosk_id}` : "")],
        ["span muted", `expires ${when(session.expires_at)}`],
        [`span state-${session.state}`, session.state],
      ];
      for (const [tag, text] of parts) {
        const [name, ...classes] = tag.split(" ");
        const element = document.createElement(name);
        if (classes.length) element.className = classes.join(" ");
        element.textContent = text;
        item.append(element);
      }
      if (session.state === "live") {
        const button = document.createElement("button");
        button.type = "button";
        const armed = isArmed(session.ref);
        button.className = `revoke ${armed ? "danger" : "quiet"}`;
        button.textContent = armed ? "Confirm revoke" : "Revoke";
        button.setAttribute("aria-label", `${armed ? "Confirm revoke of" : "Revoke"} ${session.user_id}'s session ${session.ref}`);
        button.addEventListener("click", () => revoke(session));
        item.append(button);
      }
      return item;
    });
    if (!items.length) {
      const empty = document.createElement("li");
      empty.className = "empty";
      empty.textContent = all ? "No sessions." : "No live sessions.";
      items.push(empty);
    }
    $("sessions").replaceChildren(...items);
  }

  function isArmed(ref) {
    return state.armed !== null && state.armed.ref === ref && Date.now() < state.armed.until;
  }

  /** First click arms that session's button ("Confirm revoke"), a second within CONFIRM_MS
   *  revokes. The arming belongs to the session, not to the button: a list refreshed in
   *  between keeps it on the same session, wherever its row has moved. */
  async function revoke(session) {
    if (!isArmed(session.ref)) {
      state.armed = {ref: session.ref, until: Date.now() + CONFIRM_MS};
      renderSessions();
      setTimeout(() => {
        if (state.armed && state.armed.ref === session.ref && !isArmed(session.ref)) {
          state.armed = null;
          renderSessions();
        }
      }, CONFIRM_MS + 50);
      return;
    }
    state.armed = null;
    const button = $("sessions").querySelector(`li[data-ref="${session.ref}"] button.revoke`);
    if (button) button.disabled = true;
    const answer = await request("DELETE", `/api/websocket/sessions/${encodeURIComponent(session.ref)}`);
    if (answer.ok) {
      showResult("session-result", "ok", `Revoked ${session.user_id}'s session ${session.ref}; its connections are closed.`);
    } else {
      showResult("session-result", "error", problem(answer));
    }
    loadSessions();
  }

  const SESSION_FIELDS = {user_id: "ss-user", kiosk_id: "ss-kiosk", ttl: "ss-ttl"};

  async function createSession(event) {
    event.preventDefault();
    for (const id of Object.values(SESSION_FIELDS)) fieldError(id, "");
    showResult("session-result", "", "");
    const body = {user_id: $("ss-user").value.trim(), role: $("ss-role").value};
    if (body.role === "kiosk") body.kiosk_id = $("ss-kiosk").value.trim();
    const hours = $("ss-ttl").value.trim();
    if (hours) {
      const ttl = Number(hours) * 3600;
      if (!Number.isFinite(ttl) || ttl <= 0) {
        fieldError("ss-ttl", "A number of hours greater than 0.");
        return;
      }
      body.ttl = ttl;
    }
    const answer = await request("POST", "/api/websocket/sessions", body);
    if (answer.ok) {
      $("new-session-id").textContent = answer.body.id;
      $("new-session").hidden = false;
      $("session-form").reset();
      showKioskField();
      loadSessions();
      return;
    }
    const field = String(answer.body.field || "").replace(/^body[./]/, "");
    if (answer.status === 400 && SESSION_FIELDS[field]) {
      fieldError(SESSION_FIELDS[field], answer.body.message);
      $(SESSION_FIELDS[field]).focus();
    } else {
      showResult("session-result", "error", problem(answer));
    }
  }

  function forgetNewSession() {
    $("new-session-id").textContent = "";
    $("new-session").hidden = true;
  }

  function showKioskField() {
    const kiosk = $("ss-role").value === "kiosk";
    for (const element of document.querySelectorAll(".kiosk-only")) element.hidden = !kiosk;
  }

  // -- helpers and wiring --------------------------------------------------------------

  /** Copy text to the clipboard; the button says whether it worked. */
  async function copy(text, button) {
    const label = button.textContent;
    try {
      await navigator.clipboard.writeText(text);
      button.textContent = "Copied";
    } catch (error) {
      button.textContent = "Copy failed: select and copy by hand";
    }
    setTimeout(() => { button.textContent = label; }, 1500);
  }

  function clock(date) {
    const two = (n) => String(n).padStart(2, "0");
    return `${two(date.getHours())}:${two(date.getMinutes())}:${two(date.getSeconds())}.${String(date.getMilliseconds()).padStart(3, "0")}`;
  }

  /** "2026-12-02 18:04" in local time. */
  function when(iso) {
    const date = new Date(iso);
    if (Number.isNaN(date.getTime())) return String(iso);
    const two = (n) => String(n).padStart(2, "0");
    return `${date.getFullYear()}-${two(date.getMonth() + 1)}-${two(date.getDate())} ${two(date.getHours())}:${two(date.getMinutes())}`;
  }

  async function boot() {
    $("login-form").addEventListener("submit", logIn);
    $("logout").addEventListener("click", logOut);
    $("broadcast-form").addEventListener("submit", sendBroadcast);
    $("emit-form").addEventListener("submit", emitEvent);
    $("em-template").addEventListener("click", fillTemplate);
    $("em-type").addEventListener("change", fillTemplate);
    for (const name of Object.keys(templates())) $("em-type").add(new Option(name, name));
    fillTemplate();
    $("session-form").addEventListener("submit", createSession);
    $("ss-role").addEventListener("change", showKioskField);
    $("ss-ended").addEventListener("change", renderSessions);
    $("new-session-copy").addEventListener("click", () => copy($("new-session-id").textContent, $("new-session-copy")));
    $("new-session-done").addEventListener("click", forgetNewSession);
    showKioskField();
    const events = document.querySelector("#events");
    events.addEventListener("click", eventRowAction);
    events.addEventListener("keydown", eventRowAction);
    for (const id of ["f-type", "f-room", "f-text"]) $(id).addEventListener("input", rerender);
    $("f-namespace").addEventListener("change", rerender);
    $("f-pause").addEventListener("change", rerender);
    $("f-clear").addEventListener("click", clearEvents);
    window.addEventListener("resize", drawChart);
    // Already logged in (our cookie, or the panel's `session` cookie)? Then go straight in.
    const refused = await checkSession();
    if (refused === null) {
      start();
    } else if (refused.status === 401) {
      clearSessionCookie(); // unknown, revoked or expired: forget it
      showLogin(refused.message === "Authentication required" ? "" : "Your session has ended; log in again.");
    } else {
      showLogin(refused.message);
    }
  }

  boot();
})();
