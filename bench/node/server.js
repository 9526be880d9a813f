// The floor's protocol (bench/floor.py) served by Node.js with the `ws` package: the stack the
// original gateway ran on, for `python -m bench ... --servers node` ("Node ws" in the tables).
//
// The same URL shape (`/ws/lockers?sessionId=`, any id or none accepted, no lookup), the same
// greeting (`connection`, `room_joined`), rooms (`join_room` / `leave_room`, answered
// `room_joined` / `room_left`), and `POST /api/websocket/broadcast` with eformws's body, answered
// `{"success": true, "delivered": N, "timestamp": ...}` (no API token asked, as the floor). Each
// broadcast envelope is serialized once (`JSON.stringify`) and handed to every recipient with
// `ws.send`. No compression (`perMessageDeflate: false`), messages up to 64 KiB, pings every 25 s
// with 10 s for the pong (one timer for every connection, not one per connection as Autobahn's).
// `--replay K` sends K canned events after the greeting (the connect scenario), serialized once at
// start. Nothing else: no auth, no validation, no logging. Prints `node ws listening on HOST:PORT`
// once it listens. Where it cannot be the floor (JSON is JavaScript's here): numbers in a body are
// written back the JavaScript way (`1.0` as `1`), `NaN` and `Infinity` are not JSON, invalid UTF-8
// in a POST body is replaced rather than refused (docs/performance.md, "Decisions in the scenarios").
//
// Usage: node bench/node/server.js --port PORT [--host 127.0.0.1] [--backlog 4096] [--replay K]

"use strict";

const crypto = require("node:crypto");
const http = require("node:http");
const { WebSocketServer } = require("ws");

const NAMESPACE = "/ws/lockers";
const DEFAULT_ROOM = "locker_updates";
const BROADCAST = "/api/websocket/broadcast";
const PING_INTERVAL_MS = 25000;
const PING_TIMEOUT_MS = 10000;
const MAX_PAYLOAD = 65536;

function options(argv) {
  const out = { port: 0, host: "127.0.0.1", backlog: 4096, replay: 0 };
  for (let k = 0; k < argv.length; k += 2) {
    const name = argv[k].replace(/^--/, "");
    if (!(name in out) || k + 1 >= argv.length) {
      process.stderr.write(`usage: node server.js --port PORT [--host H] [--backlog N] [--replay K]: ${argv[k]}?\n`);
      process.exit(2);
    }
    out[name] = name === "host" ? argv[k + 1] : Number.parseInt(argv[k + 1], 10);
  }
  if (!out.port) {
    process.stderr.write("node server.js: --port is required\n");
    process.exit(2);
  }
  return out;
}

const timestamp = () => new Date().toISOString(); // as the floor's js_timestamp: ms, UTC, "Z"

// Python truthiness, for `message.get("data") or {}`: null, false, 0, "", [] and {} are false.
function pyFalsy(value) {
  if (value === null || value === undefined || value === false || value === 0 || value === "") return true;
  if (Array.isArray(value)) return value.length === 0;
  return typeof value === "object" && Object.keys(value).length === 0;
}

const isDict = (value) => value !== null && typeof value === "object" && !Array.isArray(value);

// Paths as the floor's Twisted resources route them: a leaf takes every path below it.
const under = (path, prefix) => path === prefix || path.startsWith(prefix + "/");

class Floor {
  constructor(replay) {
    this.clients = new Set();
    this.rooms = new Map(); // room -> Set of clients; emptied rooms are kept, as the floor keeps them
    const at = timestamp();
    this.replay = [];
    for (let k = 0; k < replay; k++) {
      this.replay.push(JSON.stringify({
        id: crypto.randomUUID(), seq: String(k + 1), type: "locker_state_changed", timestamp: at,
        namespace: NAMESPACE, room: DEFAULT_ROOM, version: "1.0.0",
        data: { lockerId: `kiosk-1:${k}`, oldState: "closed", newState: "open", kioskId: "kiosk-1" },
      }));
    }
  }

  join(client, room) {
    let members = this.rooms.get(room);
    if (members === undefined) {
      members = new Set();
      this.rooms.set(room, members);
    }
    members.add(client);
    client.rooms.add(room);
  }

  leave(client, room) {
    client.rooms.delete(room);
    const members = this.rooms.get(room);
    if (members !== undefined) members.delete(client);
  }

  open(ws) {
    ws.rooms = new Set();
    ws.pongDue = false;
    this.clients.add(ws);
    ws.send(JSON.stringify({ type: "connection", data: {
      connectionId: crypto.randomUUID(), namespace: NAMESPACE, authenticated: true, timestamp: timestamp() },
    timestamp: timestamp() }));
    this.join(ws, DEFAULT_ROOM);
    ws.send(JSON.stringify({ type: "room_joined", data: { room: DEFAULT_ROOM }, timestamp: timestamp() }));
    for (const frame of this.replay) ws.send(frame);
    ws.on("message", (payload) => this.message(ws, payload));
    ws.on("pong", pong);
    ws.on("close", () => this.close(ws));
    ws.on("error", () => {}); // a bad frame: ws closes the connection (1002, 1007, 1009), as Autobahn does
  }

  message(ws, payload) {
    let message;
    try {
      message = JSON.parse(payload.toString("utf8"));
    } catch {
      return;
    }
    if (!isDict(message)) return;
    const data = pyFalsy(message.data) ? {} : message.data;
    if (!isDict(data)) return;
    const room = Object.hasOwn(message, "room") ? message.room : data.room;
    if (typeof room !== "string") return;
    if (message.type === "join_room") {
      this.join(ws, room);
      ws.send(JSON.stringify({ type: "room_joined", data: { room }, timestamp: timestamp() }));
    } else if (message.type === "leave_room") {
      this.leave(ws, room);
      ws.send(JSON.stringify({ type: "room_left", data: { room }, timestamp: timestamp() }));
    }
  }

  close(ws) {
    this.clients.delete(ws);
    for (const room of ws.rooms) {
      const members = this.rooms.get(room);
      if (members !== undefined) members.delete(ws);
    }
    ws.rooms = new Set();
  }

  // Serialize once, `ws.send` to every recipient; the recipients' count.
  deliver(envelope, room) {
    const text = JSON.stringify(envelope);
    const recipients = room === undefined || room === null ? this.clients
      : (typeof room === "string" ? this.rooms.get(room) : undefined) || new Set();
    for (const client of Array.from(recipients)) client.send(text);
    return recipients.size;
  }

  // The floor's `envelope_of` and `Broadcast.render_POST`: a body without event, data or
  // namespace, or a room that Python could not look up (a list or an object), is a 500.
  broadcast(body) {
    if (!isDict(body) || !["event", "data", "namespace"].every((key) => Object.hasOwn(body, key))) return null;
    const envelope = { type: body.event, data: body.data, timestamp: timestamp(), namespace: body.namespace };
    const room = body.room;
    if (room !== undefined && room !== null) {
      if (typeof room === "object") return null;
      envelope.room = room;
    }
    return this.deliver(envelope, room);
  }

  heartbeat() {
    for (const client of this.clients) {
      client.pongDue = true;
      client.ping();
    }
    setTimeout(() => {
      for (const client of this.clients) if (client.pongDue) client.terminate();
    }, PING_TIMEOUT_MS).unref();
  }
}

function pong() {
  this.pongDue = false;
}

function send(res, status, type, body, headers = {}) {
  res.writeHead(status, { "Content-Type": type, "Content-Length": Buffer.byteLength(body), ...headers });
  res.end(body);
}

const FAILED = "<html><head><title>Processing Failed</title></head><body><b>Processing Failed</b></body></html>";
const NOT_FOUND = "<html><head><title>404 - No Such Resource</title></head><body>No Such Resource</body></html>";
const ENDPOINT = "<html><body><h1>Node ws</h1><p>Not a Web server, but a WebSocket endpoint.</p></body></html>";

function main() {
  const args = options(process.argv.slice(2));
  const floor = new Floor(args.replay);
  const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: MAX_PAYLOAD,
    clientTracking: false });
  const server = http.createServer((req, res) => {
    const path = new URL(req.url, "http://bench").pathname;
    if (under(path, BROADCAST)) {
      if (req.method !== "POST") {
        send(res, 405, "text/html; charset=utf-8", "<html><body><h1>Method Not Allowed</h1></body></html>",
          { Allow: "HEAD, POST" });
        return;
      }
      const chunks = [];
      req.on("data", (chunk) => chunks.push(chunk));
      req.on("end", () => {
        let delivered = null;
        try {
          delivered = floor.broadcast(JSON.parse(Buffer.concat(chunks).toString("utf8")));
        } catch {
          delivered = null;
        }
        if (delivered === null) {
          send(res, 500, "text/html", FAILED);
        } else {
          send(res, 200, "application/json",
            JSON.stringify({ success: true, delivered, timestamp: timestamp() }));
        }
      });
    } else if (under(path, NAMESPACE)) {
      send(res, 200, "text/html; charset=UTF-8", ENDPOINT); // Autobahn's status page, in short
    } else {
      send(res, 404, "text/html; charset=utf-8", NOT_FOUND);
    }
  });
  server.keepAliveTimeout = 60000; // Twisted's idle timeout for the trigger's keep-alive connection
  server.headersTimeout = 65000;
  server.on("upgrade", (req, socket, head) => {
    const path = new URL(req.url, "http://bench").pathname;
    if (!under(path, NAMESPACE)) {
      socket.end(`HTTP/1.1 404 Not Found\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: ${
        Buffer.byteLength(NOT_FOUND)}\r\nConnection: close\r\n\r\n${NOT_FOUND}`);
      return;
    }
    wss.handleUpgrade(req, socket, head, (ws) => floor.open(ws)); // any sessionId (or none)
  });
  setInterval(() => floor.heartbeat(), PING_INTERVAL_MS).unref();
  server.listen({ port: args.port, host: args.host, backlog: args.backlog }, () => {
    process.stdout.write(`node ws listening on ${args.host}:${args.port}\n`);
  });
  for (const signal of ["SIGTERM", "SIGINT"]) process.on(signal, () => process.exit(0));
}

main();
