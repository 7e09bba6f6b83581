// A fast fake APNs for benchmarks: Node's built-in http2 over TLS (ALPN h2), no npm.
// It enforces the rules Apple's servers are known to apply, so that a benchmark proves
// throughput under them and not against a friendlier server.
//
//   node bench/fake_apns.mjs --cert server.pem --key server-key.pem \
//        --auth-key AuthKey.p8 [--port 0] [--latency-ms 20] [--topic T] [--key-id K]
//        [--team-id T] [--max-streams 1000] [--no-gating] [--goaway-after N]
//        [--reject-every K]
//
// POST /3/device/<64 hex> answers 200 after --latency-ms (setTimeout, so streams overlap:
// the latency costs wall time, not CPU). Checks, in APNs order: path/method (404 BadPath /
// 405 MethodNotAllowed), `authorization: bearer <JWT>` (403 MissingProviderToken), the
// JWT's ES256 signature against --auth-key's public key plus kid/iss when --key-id /
// --team-id are given (403 InvalidProviderToken), its age (403 ExpiredProviderToken when
// iat is more than an hour old), the provider-token update rule (below), apns-topic when
// --topic is given (400 MissingTopic / TopicDisallowed), the device token (400
// BadDeviceToken) and the body (400 PayloadEmpty, 413 PayloadTooLarge).
//
// Stream gating (off with --no-gating): a new connection advertises
// SETTINGS_MAX_CONCURRENT_STREAMS = 1. When a notification is accepted the limit is raised
// to --max-streams, when one is rejected (any non-200 answer) it drops to 1 again; the
// SETTINGS frame is queued before that answer's HEADERS, so the client learns the new
// limit no later than the answer. A stream opened while the connection already has as
// many requests in progress as the limit allows is refused with RST_STREAM REFUSED_STREAM
// (not processed: the client may send it again), whether or not the client had
// acknowledged the limit yet (a client that had is counted apart: it broke the limit
// knowingly, and APNs may end such a connection with "Maximum active streams violated").
// This fake enforces the limit itself: left to nghttp2, a stream beyond an acknowledged
// limit ends the whole connection (GOAWAY INTERNAL_ERROR from Node, unanswered requests
// lost), which is not what a client should be measured against.
//
// Provider tokens, per (kid, iss), across every connection this one process serves: a
// token string not seen before is a token update; an update less than 20 minutes after
// the last accepted one is answered 429 TooManyProviderTokenUpdates (the token is not
// accepted, every use of it keeps getting 429 until 20 minutes have passed). Tokens
// accepted earlier stay valid until their iat is an hour old. Signatures are verified once
// per distinct token (a client reuses one token for up to an hour).
//
// --goaway-after N: once a connection has processed N requests, GOAWAY (NO_ERROR,
// last-stream-id = that request's stream, debug data {"reason":"Shutdown"}); every stream
// up to it is still answered, then the connection is closed. Streams above it are never
// processed (counted as not_processed_after_goaway). --reject-every K: every K-th request
// that would have been accepted is answered 410 Unregistered with a timestamp.
//
// Prints "ready <port>" once listening. SIGUSR2 prints a stats JSON line and goes on;
// SIGTERM/SIGINT print the final stats JSON line and exit. Stats: requests (processed),
// accepted, rejected (by reason), connections, max in-flight streams (in all and on one
// connection), frames sent that a client must handle (`refused` = RST_STREAM
// REFUSED_STREAM, rst_sent and goaway_sent by error code, goaway_debug; GOAWAYs that only
// answer a client's own GOAWAY or close are apart), streams not processed after a GOAWAY,
// how often the limit was raised and lowered, token updates (accepted and refused),
// repeated_collapse_ids (a notification accepted twice: the client sent it again after
// APNs had taken it), unanswered (processed, but the stream or connection went before the
// answer), and this process's CPU time. Frames are counted by a small tap
// between TLS and nghttp2, which also writes the gated limit into the SETTINGS frames.
import crypto from 'node:crypto';
import fs from 'node:fs';
import http2 from 'node:http2';
import net from 'node:net';
import process from 'node:process';
import { Duplex } from 'node:stream';
import tls from 'node:tls';

const TOKEN_UPDATE_MIN_MS = 20 * 60 * 1000;
const TOKEN_MAX_AGE_S = 3600;

function parseArgs(argv) {
  const opts = {
    port: 0, latencyMs: 20, cert: null, key: null, authKey: null,
    topic: null, keyId: null, teamId: null, host: '127.0.0.1',
    maxStreams: 1000, gating: true, goawayAfter: 0, rejectEvery: 0,
  };
  const names = {
    '--port': 'port', '--latency-ms': 'latencyMs', '--cert': 'cert', '--key': 'key',
    '--auth-key': 'authKey', '--topic': 'topic', '--key-id': 'keyId', '--team-id': 'teamId',
    '--host': 'host', '--max-streams': 'maxStreams', '--goaway-after': 'goawayAfter',
    '--reject-every': 'rejectEvery',
  };
  for (let i = 0; i < argv.length; i += 1) {
    if (argv[i] === '--no-gating') {
      opts.gating = false;
      continue;
    }
    const name = names[argv[i]];
    if (!name || i + 1 >= argv.length) {
      console.error(`usage: unknown or incomplete option ${argv[i]}`);
      process.exit(2);
    }
    opts[name] = argv[i + 1];
    i += 1;
  }
  for (const name of ['port', 'latencyMs', 'maxStreams', 'goawayAfter', 'rejectEvery']) {
    opts[name] = Number(opts[name]);
    if (!Number.isFinite(opts[name]) || opts[name] < 0) {
      console.error(`usage: ${name} must be a number >= 0`);
      process.exit(2);
    }
  }
  if (opts.maxStreams < 1) {
    console.error('usage: --max-streams must be at least 1');
    process.exit(2);
  }
  if (!opts.cert || !opts.key) {
    console.error('--cert and --key are required');
    process.exit(2);
  }
  return opts;
}

const opts = parseArgs(process.argv.slice(2));
const publicKey = opts.authKey
  ? crypto.createPublicKey(crypto.createPrivateKey(fs.readFileSync(opts.authKey)))
  : null;

const TOKEN_RE = /^[0-9a-fA-F]{64}$/;
const H2_ERRORS = [
  'NO_ERROR', 'PROTOCOL_ERROR', 'INTERNAL_ERROR', 'FLOW_CONTROL_ERROR', 'SETTINGS_TIMEOUT',
  'STREAM_CLOSED', 'FRAME_SIZE_ERROR', 'REFUSED_STREAM', 'CANCEL', 'COMPRESSION_ERROR',
  'CONNECT_ERROR', 'ENHANCE_YOUR_CALM', 'INADEQUATE_SECURITY', 'HTTP_1_1_REQUIRED',
];
const REFUSED_STREAM = 7;

const stats = {
  gating: opts.gating,
  requests: 0,
  accepted: 0,
  rejected: {},
  connections: 0,
  in_flight: 0,
  max_in_flight: 0,
  max_in_flight_one_connection: 0,
  refused: 0,
  refused_beyond_acknowledged_limit: 0,
  rst_sent: {},
  goaway_sent: {},
  goaway_sent_after_client_left: {},
  goaway_debug: {},
  not_processed_after_goaway: 0,
  connections_closed_after_goaway: 0,
  limit_raised: 0,
  limit_lowered: 0,
  settings_errors: 0,
  // Accepted pushes whose apns-collapse-id had been accepted before: a client that sent
  // one notification twice (e.g. again after losing the first answer).
  repeated_collapse_ids: 0,
  // Processed requests whose stream or connection went before the answer was written.
  unanswered: 0,
  jwt_verifications: 0,
  token_updates: 0,
  token_updates_refused: 0,
  session_errors: {},
  stream_errors: {},
  tls_errors: {},
};
function bump(map, err) {
  const key = (err && (err.code || err.message)) || String(err);
  map[key] = (map[key] || 0) + 1;
}
const startedAt = process.hrtime.bigint();
const cpuAtStart = process.cpuUsage();

// -- provider tokens ---------------------------------------------------------------------

// token -> { team: "kid|iss", iat, accepted }: the signature is verified once per token.
const knownTokens = new Map();
// "kid|iss" -> time (ms) of the last accepted token update, across every connection.
const lastUpdate = new Map();

function b64urlJson(part) {
  return JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
}

// A verified token's entry, or the APNs reason it is refused for.
function verifyToken(token) {
  const parts = token.split('.');
  if (parts.length !== 3) return 'InvalidProviderToken';
  let header;
  let claims;
  try {
    header = b64urlJson(parts[0]);
    claims = b64urlJson(parts[1]);
  } catch {
    return 'InvalidProviderToken';
  }
  if (header.alg !== 'ES256') return 'InvalidProviderToken';
  if (opts.keyId !== null && header.kid !== opts.keyId) return 'InvalidProviderToken';
  if (opts.teamId !== null && claims.iss !== opts.teamId) return 'InvalidProviderToken';
  stats.jwt_verifications += 1;
  const ok = crypto.verify(
    'sha256',
    Buffer.from(`${parts[0]}.${parts[1]}`),
    { key: publicKey, dsaEncoding: 'ieee-p1363' },
    Buffer.from(parts[2], 'base64url'),
  );
  if (!ok) return 'InvalidProviderToken';
  if (typeof claims.iat !== 'number') return 'InvalidProviderToken';
  return { team: `${header.kid}|${claims.iss}`, iat: claims.iat, accepted: false };
}

// [status, reason] when the provider token is refused, else null.
function checkProviderToken(authorization) {
  const [scheme, token] = authorization.trim().split(/\s+/, 2);
  if (!scheme || scheme.toLowerCase() !== 'bearer' || !token) return [403, 'InvalidProviderToken'];
  if (publicKey === null) return null; // presence check only
  let entry = knownTokens.get(token);
  if (entry === undefined) {
    const verified = verifyToken(token);
    if (typeof verified === 'string') return [403, verified];
    entry = verified;
    knownTokens.set(token, entry);
  }
  const now = Date.now();
  if (now / 1000 - entry.iat > TOKEN_MAX_AGE_S) return [403, 'ExpiredProviderToken'];
  if (entry.accepted) return null;
  // A token never accepted before: a provider token update for its team and key.
  const previous = lastUpdate.get(entry.team);
  if (previous !== undefined && now - previous < TOKEN_UPDATE_MIN_MS) {
    stats.token_updates_refused += 1;
    return [429, 'TooManyProviderTokenUpdates'];
  }
  entry.accepted = true;
  lastUpdate.set(entry.team, now);
  stats.token_updates += 1;
  return null;
}

let acceptable = 0; // requests that passed every check, for --reject-every
const acceptedCollapseIds = new Set();

function decide(headers, bytes) {
  const path = String(headers[':path'] || '').split('?', 1)[0];
  if (!path.startsWith('/3/device/')) return [404, 'BadPath'];
  if (headers[':method'] !== 'POST') return [405, 'MethodNotAllowed'];
  const authorization = headers.authorization;
  if (!authorization) return [403, 'MissingProviderToken'];
  const problem = checkProviderToken(String(authorization));
  if (problem !== null) return problem;
  if (opts.topic !== null) {
    if (!headers['apns-topic']) return [400, 'MissingTopic'];
    if (headers['apns-topic'] !== opts.topic) return [400, 'TopicDisallowed'];
  }
  const token = path.slice('/3/device/'.length);
  if (!token) return [400, 'MissingDeviceToken'];
  if (!TOKEN_RE.test(token)) return [400, 'BadDeviceToken'];
  if (bytes === 0) return [400, 'PayloadEmpty'];
  if (bytes > 4096) return [413, 'PayloadTooLarge'];
  acceptable += 1;
  if (opts.rejectEvery > 0 && acceptable % opts.rejectEvery === 0) return [410, 'Unregistered'];
  return [200, null];
}

// -- frame tap ---------------------------------------------------------------------------

const PREFACE_LENGTH = 24; // "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
const FRAME_HEADERS = 0x1;
const FRAME_RST_STREAM = 0x3;
const FRAME_SETTINGS = 0x4;
const FRAME_GOAWAY = 0x7;
const FLAG_ACK = 0x1;
const SETTINGS_MAX_CONCURRENT_STREAMS = 0x3;
const KEPT_PAYLOAD = 256; // enough for error codes and GOAWAY debug data

// Walks the frames of one direction of a connection. For the frame types in `watch`,
// `onPayload(frame, chunk, at, n)` sees each piece of the payload as it passes (and may
// change it in place) and `onFrame(frame, payloadStart)` the whole frame at its end.
class FrameScanner {
  constructor(skip, watch, onFrame, onPayload = null) {
    this.skip = skip; // bytes to pass over: the client's preface, then unwatched payloads
    this.watch = watch;
    this.onFrame = onFrame;
    this.onPayload = onPayload;
    this.head = Buffer.alloc(9);
    this.headLength = 0;
    this.frame = null;
  }

  feed(chunk) {
    let at = 0;
    while (at < chunk.length) {
      if (this.skip > 0) {
        const take = Math.min(this.skip, chunk.length - at);
        this.skip -= take;
        at += take;
        continue;
      }
      const frame = this.frame;
      if (frame !== null) {
        const take = Math.min(frame.length - frame.pos, chunk.length - at);
        if (this.onPayload !== null) this.onPayload(frame, chunk, at, take);
        if (frame.kept < KEPT_PAYLOAD) {
          const keep = Math.min(KEPT_PAYLOAD - frame.kept, take);
          frame.parts.push(Buffer.from(chunk.subarray(at, at + keep)));
          frame.kept += keep;
        }
        frame.pos += take;
        at += take;
        if (frame.pos === frame.length) {
          this.frame = null;
          this.onFrame(frame, Buffer.concat(frame.parts));
        }
        continue;
      }
      const take = Math.min(9 - this.headLength, chunk.length - at);
      chunk.copy(this.head, this.headLength, at, at + take);
      this.headLength += take;
      at += take;
      if (this.headLength < 9) break;
      this.headLength = 0;
      const length = this.head.readUIntBE(0, 3);
      const type = this.head[3];
      if (!this.watch.has(type)) {
        this.skip = length;
        continue;
      }
      const next = {
        type,
        flags: this.head[4],
        streamId: this.head.readUInt32BE(5) & 0x7fffffff,
        length,
        pos: 0,
        kept: 0,
        parts: [],
        settingId: 0,
        settingValue: 0,
        hasLimit: false,
      };
      if (length === 0) this.onFrame(next, Buffer.alloc(0));
      else this.frame = next;
    }
  }
}

function errorName(code) {
  return H2_ERRORS[code] || `0x${code.toString(16)}`;
}

// Plain HTTP/2 bytes between a TLS socket and Node's http2 session. On the way it counts
// what the server sends that a client must cope with (RST_STREAM, GOAWAY) and the streams
// a client opens, and writes the gated stream limit into each outgoing SETTINGS frame:
// nghttp2 itself is told there is no limit, so that refusing a stream is this fake's
// decision (REFUSED_STREAM) and never nghttp2's or Node's own (which end the whole
// connection once the client has acknowledged the limit).
class FrameTap extends Duplex {
  constructor(tlsSocket, firstLimit) {
    super();
    this.tls = tlsSocket;
    this.limitsToWrite = [firstLimit]; // one per SETTINGS frame nghttp2 will send
    this.limitsSent = []; // written into SETTINGS frames, oldest first, not yet ACKed
    // The limit the client has acknowledged (none: HTTP/2 sets no limit before), and its
    // value when each stream was opened. Taken from the order of the frames, since Node
    // may report a SETTINGS ACK before the 'stream' events of HEADERS that preceded it.
    this.acknowledged = Infinity;
    this.acknowledgedByStream = new Map();
    this.maxClientStreamId = 0;
    this.goawayLastStreamId = null;
    this.clientLeft = false; // the client sent GOAWAY or closed its side
    this.inbound = new FrameScanner(
      PREFACE_LENGTH,
      new Set([FRAME_HEADERS, FRAME_SETTINGS, FRAME_GOAWAY]),
      (frame) => this.received(frame),
    );
    this.outbound = new FrameScanner(
      0,
      new Set([FRAME_RST_STREAM, FRAME_SETTINGS, FRAME_GOAWAY]),
      (frame, payload) => this.sent(frame, payload),
      (frame, chunk, at, n) => {
        if (frame.type === FRAME_SETTINGS) this.rewriteSettings(frame, chunk, at, n);
      },
    );
    tlsSocket.on('data', (chunk) => {
      this.inbound.feed(chunk);
      if (!this.push(chunk)) tlsSocket.pause();
    });
    tlsSocket.on('end', () => {
      this.clientLeft = true;
      this.push(null);
    });
    tlsSocket.on('close', () => this.destroy());
  }

  received(frame) {
    if (frame.type === FRAME_GOAWAY) {
      this.clientLeft = true;
    } else if (frame.type === FRAME_SETTINGS) {
      if (frame.flags & FLAG_ACK) {
        const limit = this.limitsSent.shift();
        if (limit !== undefined && limit !== null) this.acknowledged = limit;
      }
    } else if (frame.streamId > this.maxClientStreamId) {
      this.maxClientStreamId = frame.streamId;
      this.acknowledgedByStream.set(frame.streamId, this.acknowledged);
    }
  }

  acknowledgedAtOpen(streamId) {
    const limit = this.acknowledgedByStream.get(streamId);
    this.acknowledgedByStream.delete(streamId);
    return limit === undefined ? this.acknowledged : limit;
  }

  // SETTINGS entries are 6 bytes: a 2-byte identifier, then a 4-byte value.
  rewriteSettings(frame, chunk, at, n) {
    for (let i = 0; i < n; i += 1) {
      const offset = (frame.pos + i) % 6;
      if (offset === 0) frame.settingId = chunk[at + i] << 8;
      else if (offset === 1) frame.settingId |= chunk[at + i];
      else if (frame.settingId === SETTINGS_MAX_CONCURRENT_STREAMS) {
        if (offset === 2) {
          const limit = this.limitsToWrite.shift();
          if (limit === undefined) bump(stats.session_errors, { code: 'UNEXPECTED_SETTINGS' });
          frame.settingValue = limit === undefined ? NGHTTP2_NO_LIMIT : limit;
          frame.hasLimit = true;
        }
        chunk[at + i] = (frame.settingValue >>> (8 * (5 - offset))) & 0xff;
      }
    }
  }

  sent(frame, payload) {
    if (frame.type === FRAME_SETTINGS) {
      // The client ACKs every SETTINGS frame, in order.
      if (!(frame.flags & FLAG_ACK)) this.limitsSent.push(frame.hasLimit ? frame.settingValue : null);
    } else if (frame.type === FRAME_RST_STREAM && payload.length >= 4) {
      const code = payload.readUInt32BE(0);
      if (code === REFUSED_STREAM) stats.refused += 1;
      bump(stats.rst_sent, { code: errorName(code) });
    } else if (frame.type === FRAME_GOAWAY && payload.length >= 8) {
      const last = payload.readUInt32BE(0) & 0x7fffffff;
      // Node answers a client's own GOAWAY or close with one: not news for the client.
      const code = { code: errorName(payload.readUInt32BE(4)) };
      bump(this.clientLeft ? stats.goaway_sent_after_client_left : stats.goaway_sent, code);
      if (payload.length > 8) bump(stats.goaway_debug, { code: payload.subarray(8).toString() });
      if (this.goawayLastStreamId === null || last < this.goawayLastStreamId) {
        this.goawayLastStreamId = last;
      }
    }
  }

  // Client streams above the GOAWAY's last-stream-id: never processed. Clients number
  // their streams 1, 3, 5, ..., so the highest id opened tells how many there were.
  notProcessedAfterGoaway() {
    if (this.goawayLastStreamId === null) return 0;
    return Math.max(0, (this.maxClientStreamId - this.goawayLastStreamId) / 2);
  }

  _read() {
    this.tls.resume();
  }

  _write(chunk, encoding, callback) {
    this.outbound.feed(chunk);
    if (this.tls.write(chunk)) callback();
    else this.tls.once('drain', callback);
  }

  _final(callback) {
    this.tls.end();
    callback();
  }

  _destroy(err, callback) {
    this.tls.destroy();
    callback(err);
  }
}

// -- server ------------------------------------------------------------------------------

function snapshot(final) {
  const cpu = process.cpuUsage(cpuAtStart);
  let notProcessed = stats.not_processed_after_goaway;
  for (const conn of live) notProcessed += conn.tap.notProcessedAfterGoaway();
  return JSON.stringify({
    event: final ? 'stats-final' : 'stats',
    ...stats,
    not_processed_after_goaway: notProcessed,
    cpu_user_s: cpu.user / 1e6,
    cpu_system_s: cpu.system / 1e6,
    cpu_s: (cpu.user + cpu.system) / 1e6,
    uptime_s: Number(process.hrtime.bigint() - startedAt) / 1e9,
    rss_mb: process.memoryUsage().rss / 1048576,
  });
}

const initialLimit = opts.gating ? 1 : opts.maxStreams;
// What nghttp2 is told it advertises; the tap writes the real limit into the frame.
const NGHTTP2_NO_LIMIT = 2 ** 32 - 1;
const h2server = http2.createServer({
  peerMaxConcurrentStreams: 1000,
  maxSessionMemory: 64,
  // Refused streams, and the DATA frames that still arrive for them, are the client's
  // race to recover from, not a reason for Node to end the connection (by default after
  // 100 and 1,000 of them).
  maxSessionInvalidFrames: 2 ** 31,
  maxSessionRejectedStreams: 2 ** 31,
  // Every change of the limit is one SETTINGS frame waiting for the client's ACK.
  maxOutstandingSettings: 10000,
  // What APNs advertises besides the stream limit.
  settings: { maxConcurrentStreams: NGHTTP2_NO_LIMIT, maxHeaderListSize: 8000 },
});

const live = new Set(); // state of the open connections
let nextTap = null;

function setLimit(conn, limit) {
  if (conn.limit === limit || conn.session.destroyed) return;
  try {
    conn.session.settings({ maxConcurrentStreams: NGHTTP2_NO_LIMIT });
  } catch (err) {
    stats.settings_errors += 1;
    bump(stats.session_errors, err);
    return;
  }
  conn.tap.limitsToWrite.push(limit);
  conn.limit = limit;
  if (limit === 1) stats.limit_lowered += 1;
  else stats.limit_raised += 1;
}

h2server.on('session', (session) => {
  stats.connections += 1;
  const conn = {
    session,
    tap: nextTap,
    limit: initialLimit, // the last one advertised
    processed: 0,
    inFlight: 0,
    goawayLast: null, // set once --goaway-after has sent its GOAWAY
    closing: false,
  };
  nextTap = null;
  session.fakeConn = conn;
  live.add(conn);
  session.on('error', (err) => bump(stats.session_errors, err));
  session.on('close', () => {
    live.delete(conn);
    stats.not_processed_after_goaway += conn.tap.notProcessedAfterGoaway();
  });
});

// After --goaway-after's GOAWAY, once every stream up to its last-stream-id is answered:
// close the connection as APNs does, once the answers are out. (Node's session.close()
// would send a second GOAWAY first.)
function closeIfDrained(conn) {
  if (conn.goawayLast === null || conn.inFlight > 0 || conn.closing) return;
  conn.closing = true;
  stats.connections_closed_after_goaway += 1;
  const giveUpAt = Date.now() + 10000; // a client that stopped reading
  const closeWhenFlushed = () => {
    if (conn.session.destroyed) return;
    const pending = conn.session.state.outboundQueueSize > 0 || conn.tap.writableLength > 0;
    if (pending && Date.now() < giveUpAt) setTimeout(closeWhenFlushed, 1);
    else setImmediate(() => conn.tap.tls.end());
  };
  setImmediate(closeWhenFlushed);
}

// Errors of streams this fake did not process (refused, above a GOAWAY, closed before
// Node even announced them) are expected; Node reports them all the same.
function onStreamError(err) {
  if (this.fakeProcessed) bump(stats.stream_errors, err);
}

h2server.on('stream', (stream, headers) => {
  // First of all: Node emits 'stream' a tick late, and a stream closed in between (by a
  // GOAWAY, say) still emits its error, which would end this process if unheard.
  stream.on('error', onStreamError);
  const session = stream.session;
  if (!session) return; // the connection went while the stream was being set up
  const conn = session.fakeConn;
  if (conn.goawayLast !== null && stream.id > conn.goawayLast) {
    // Opened before the client saw the GOAWAY: not processed (nghttp2 closes it once the
    // GOAWAY is out; the tap counts it).
    stream.resume();
    return;
  }
  const acknowledged = conn.tap.acknowledgedAtOpen(stream.id);
  if (conn.inFlight >= conn.limit) {
    // Beyond the advertised limit: not processed, the client may send it again. A client
    // that had already acknowledged the limit broke it knowingly (APNs may then end the
    // connection: "Maximum active streams violated for this endpoint").
    if (conn.inFlight >= acknowledged) stats.refused_beyond_acknowledged_limit += 1;
    stream.close(http2.constants.NGHTTP2_REFUSED_STREAM);
    return;
  }
  stream.fakeProcessed = true;
  stats.requests += 1;
  stats.in_flight += 1;
  conn.processed += 1;
  conn.inFlight += 1;
  if (stats.in_flight > stats.max_in_flight) stats.max_in_flight = stats.in_flight;
  if (conn.inFlight > stats.max_in_flight_one_connection) {
    stats.max_in_flight_one_connection = conn.inFlight;
  }
  if (opts.goawayAfter > 0 && conn.processed === opts.goawayAfter) {
    conn.goawayLast = stream.id;
    session.goaway(
      http2.constants.NGHTTP2_NO_ERROR,
      stream.id,
      Buffer.from(JSON.stringify({ reason: 'Shutdown' })),
    );
  }
  let answered = false;
  const done = () => {
    if (answered) return;
    answered = true;
    stats.in_flight -= 1;
    conn.inFlight -= 1;
    closeIfDrained(conn);
  };
  // A stream reset by the client (or cut by a connection error) before its answer: APNs
  // may or may not have delivered it, the client cannot know.
  stream.on('close', () => {
    if (!answered) stats.unanswered += 1;
    done();
  });
  let bytes = 0;
  stream.on('data', (chunk) => { bytes += chunk.length; });
  stream.on('end', () => {
    const [status, reason] = decide(headers, bytes);
    const apnsId = headers['apns-id'] || crypto.randomUUID();
    const answer = () => {
      if (stream.destroyed || stream.closed) {
        if (!answered) stats.unanswered += 1;
        done();
        return;
      }
      if (status === 200) {
        stats.accepted += 1;
        const collapseId = headers['apns-collapse-id'];
        if (collapseId !== undefined) {
          if (acceptedCollapseIds.has(collapseId)) stats.repeated_collapse_ids += 1;
          else acceptedCollapseIds.add(collapseId);
        }
      } else stats.rejected[reason] = (stats.rejected[reason] || 0) + 1;
      // Queued before the answer's HEADERS, so the client has the new limit with it.
      if (opts.gating) setLimit(conn, status === 200 ? opts.maxStreams : 1);
      if (status === 200) {
        stream.respond({ ':status': 200, 'apns-id': apnsId }, { endStream: true });
      } else {
        const fields = { reason };
        if (status === 410) fields.timestamp = Date.now();
        const body = JSON.stringify(fields);
        stream.respond({
          ':status': status,
          'apns-id': apnsId,
          'content-type': 'application/json',
          'content-length': Buffer.byteLength(body),
        });
        stream.end(body);
      }
      done();
    };
    if (opts.latencyMs > 0) setTimeout(answer, opts.latencyMs);
    else setImmediate(answer);
  });
});

const secureContext = tls.createSecureContext({
  cert: fs.readFileSync(opts.cert),
  key: fs.readFileSync(opts.key),
});

const server = net.createServer((socket) => {
  socket.setNoDelay(true);
  const tlsSocket = new tls.TLSSocket(socket, {
    isServer: true,
    secureContext,
    ALPNProtocols: ['h2'],
  });
  tlsSocket.on('error', (err) => bump(stats.tls_errors, err));
  tlsSocket.once('secure', () => {
    if (tlsSocket.alpnProtocol !== 'h2') {
      bump(stats.tls_errors, { code: 'NO_H2_ALPN' });
      tlsSocket.destroy();
      return;
    }
    nextTap = new FrameTap(tlsSocket, initialLimit);
    h2server.emit('connection', nextTap); // emits 'session' synchronously
  });
});

function stop() {
  process.stdout.write(`${snapshot(true)}\n`, () => process.exit(0));
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
process.on('SIGUSR2', () => process.stdout.write(`${snapshot(false)}\n`));

server.listen(opts.port, opts.host, () => {
  process.stdout.write(`ready ${server.address().port}\n`);
});
