// A fast fake APNs for benchmarks: Node's built-in http2 over TLS (ALPN h2), no npm.
//
//   node bench/fake_apns.mjs --cert server.pem --key server-key.pem \
//        --auth-key AuthKey.p8 [--port 0] [--latency-ms 20] [--topic T] [--key-id K] [--team-id T]
//
// POST /3/device/<64 hex> answers 200 + apns-id after --latency-ms (setTimeout, so
// streams overlap: the latency costs wall time, not CPU). Checks, in APNs order:
// path/method (404 BadPath / 405 MethodNotAllowed), `authorization: bearer <JWT>`
// (403 MissingProviderToken), the JWT's ES256 signature against --auth-key's public key
// plus kid/iss when --key-id/--team-id are given (403 InvalidProviderToken; a token that
// verified once is cached, as it is reused for ~45 minutes), apns-topic when --topic is
// given (400 MissingTopic / TopicDisallowed), and the device token (400 BadDeviceToken).
//
// Prints "ready <port>" once listening. SIGUSR2 prints a stats JSON line and goes on;
// SIGTERM/SIGINT print the final stats JSON line and exit. Stats: requests, accepted,
// rejected (by reason), connections, max in-flight streams, and this process's CPU time.
import crypto from 'node:crypto';
import fs from 'node:fs';
import http2 from 'node:http2';
import process from 'node:process';

function parseArgs(argv) {
  const opts = {
    port: 0, latencyMs: 20, cert: null, key: null, authKey: null,
    topic: null, keyId: null, teamId: null, host: '127.0.0.1',
  };
  const names = {
    '--port': 'port', '--latency-ms': 'latencyMs', '--cert': 'cert', '--key': 'key',
    '--auth-key': 'authKey', '--topic': 'topic', '--key-id': 'keyId', '--team-id': 'teamId',
    '--host': 'host',
  };
  for (let i = 0; i < argv.length; i += 1) {
    const name = names[argv[i]];
    if (!name || i + 1 >= argv.length) {
      console.error(`usage: unknown or incomplete option ${argv[i]}`);
      process.exit(2);
    }
    opts[name] = argv[i + 1];
    i += 1;
  }
  opts.port = Number(opts.port);
  opts.latencyMs = Number(opts.latencyMs);
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
const verifiedTokens = new Set();
const stats = {
  requests: 0,
  accepted: 0,
  rejected: {},
  connections: 0,
  in_flight: 0,
  max_in_flight: 0,
  jwt_verifications: 0,
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

function b64urlJson(part) {
  return JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
}

// null when the provider token is acceptable, else the APNs reason.
function checkJwt(authorization) {
  const [scheme, token] = authorization.trim().split(/\s+/, 2);
  if (!scheme || scheme.toLowerCase() !== 'bearer' || !token) return 'InvalidProviderToken';
  if (verifiedTokens.has(token)) return null;
  if (publicKey === null) return null; // presence check only
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
  if (typeof claims.iat !== 'number' || Date.now() / 1000 - claims.iat > 3600) {
    return 'ExpiredProviderToken';
  }
  verifiedTokens.add(token);
  return null;
}

function decide(headers) {
  const path = String(headers[':path'] || '').split('?', 1)[0];
  if (!path.startsWith('/3/device/')) return [404, 'BadPath'];
  if (headers[':method'] !== 'POST') return [405, 'MethodNotAllowed'];
  const authorization = headers.authorization;
  if (!authorization) return [403, 'MissingProviderToken'];
  const problem = checkJwt(String(authorization));
  if (problem !== null) return [403, problem];
  if (opts.topic !== null) {
    if (!headers['apns-topic']) return [400, 'MissingTopic'];
    if (headers['apns-topic'] !== opts.topic) return [400, 'TopicDisallowed'];
  }
  const token = path.slice('/3/device/'.length);
  if (!token) return [400, 'MissingDeviceToken'];
  if (!TOKEN_RE.test(token)) return [400, 'BadDeviceToken'];
  return [200, null];
}

function snapshot(final) {
  const cpu = process.cpuUsage(cpuAtStart);
  return JSON.stringify({
    event: final ? 'stats-final' : 'stats',
    ...stats,
    cpu_user_s: cpu.user / 1e6,
    cpu_system_s: cpu.system / 1e6,
    cpu_s: (cpu.user + cpu.system) / 1e6,
    uptime_s: Number(process.hrtime.bigint() - startedAt) / 1e9,
    rss_mb: process.memoryUsage().rss / 1048576,
  });
}

const server = http2.createSecureServer({
  cert: fs.readFileSync(opts.cert),
  key: fs.readFileSync(opts.key),
  allowHTTP1: false,
  ALPNProtocols: ['h2'],
  peerMaxConcurrentStreams: 1000,
  maxSessionMemory: 64,
  settings: { maxConcurrentStreams: 1000 },
});

server.on('session', (session) => {
  stats.connections += 1;
  session.on('error', (err) => bump(stats.session_errors, err));
});
server.on('tlsClientError', (err) => bump(stats.tls_errors, err));

server.on('stream', (stream, headers) => {
  stats.requests += 1;
  stats.in_flight += 1;
  if (stats.in_flight > stats.max_in_flight) stats.max_in_flight = stats.in_flight;
  stream.on('error', (err) => bump(stats.stream_errors, err));
  let bytes = 0;
  stream.on('data', (chunk) => { bytes += chunk.length; });
  stream.on('end', () => {
    let [status, reason] = decide(headers);
    if (status === 200 && bytes === 0) [status, reason] = [400, 'PayloadEmpty'];
    if (status === 200 && bytes > 4096) [status, reason] = [413, 'PayloadTooLarge'];
    const apnsId = headers['apns-id'] || crypto.randomUUID();
    const answer = () => {
      stats.in_flight -= 1;
      if (status === 200) stats.accepted += 1;
      else stats.rejected[reason] = (stats.rejected[reason] || 0) + 1;
      if (stream.destroyed || stream.closed) return;
      if (status === 200) {
        stream.respond({ ':status': 200, 'apns-id': apnsId }, { endStream: true });
      } else {
        const body = JSON.stringify({ reason });
        stream.respond({
          ':status': status,
          'apns-id': apnsId,
          'content-type': 'application/json',
          'content-length': Buffer.byteLength(body),
        });
        stream.end(body);
      }
    };
    if (opts.latencyMs > 0) setTimeout(answer, opts.latencyMs);
    else setImmediate(answer);
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
