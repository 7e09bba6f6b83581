// Load generator for the fake APNs' own ceiling (Node built-ins only).
//
//   node bench/apns_load.mjs --url https://127.0.0.1:PORT --ca ca.pem --jwt <token>
//        [--topic T] [--connections 4] [--streams 200] [--seconds 3]
//
// Keeps --streams requests in flight on each of --connections HTTP/2 connections for
// --seconds (within the server's stream limit) and prints one JSON line: requests
// completed, non-200 answers, rate, and this client's own CPU time.
import fs from 'node:fs';
import http2 from 'node:http2';
import process from 'node:process';

const opts = { url: null, ca: null, jwt: '', topic: 'com.example.parent', connections: 4, streams: 200, seconds: 3 };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i += 2) opts[argv[i].replace(/^--/, '')] = argv[i + 1];
const connections = Number(opts.connections);
const streams = Number(opts.streams);
const seconds = Number(opts.seconds);
const ca = fs.readFileSync(opts.ca);
const token = 'ab'.repeat(32);
const body = JSON.stringify({ aps: { alert: { title: 'Follow-up from Dr. Chen', body: 'How is Maya today?' } } });

let done = 0;
let failed = 0;
let stopping = false;
const cpu0 = process.cpuUsage();
const t0 = process.hrtime.bigint();

function fire(session) {
  if (stopping || session.closed || session.destroyed) return;
  const req = session.request({
    ':method': 'POST',
    ':path': `/3/device/${token}`,
    authorization: `bearer ${opts.jwt}`,
    'apns-topic': opts.topic,
    'apns-push-type': 'alert',
  });
  req.on('response', (headers) => { if (headers[':status'] !== 200) failed += 1; });
  req.on('error', () => { failed += 1; });
  req.on('close', () => { done += 1; fire(session); });
  req.resume();
  req.end(body);
}

const sessions = [];
for (let c = 0; c < connections; c += 1) {
  // Assume a limit of 1 until the server's SETTINGS say otherwise, as APNs wants: nghttp2
  // then holds the other requests back until the server raises its limit.
  const session = http2.connect(opts.url, { ca, peerMaxConcurrentStreams: 1 });
  session.on('error', (e) => { console.error(`session error: ${e.message}`); });
  session.on('connect', () => { for (let s = 0; s < streams; s += 1) fire(session); });
  sessions.push(session);
}

setTimeout(() => {
  stopping = true;
  const wall = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu = process.cpuUsage(cpu0);
  console.log(JSON.stringify({
    requests: done, failed, seconds: wall, rate: done / wall,
    client_cpu_s: (cpu.user + cpu.system) / 1e6, connections, streams,
  }));
  for (const s of sessions) s.destroy();
  process.exit(0);
}, seconds * 1000);
