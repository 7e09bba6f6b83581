// Push one notification to each device token of a file with @parse/node-apn, as its README
// shows it: one apn.Provider with token auth, every notification sent at once, no
// database. Run by bench/run.py's `peers` scenario (package.json pins the version).
//
//   node node_apn_push.mjs --url https://127.0.0.1:PORT --ca ca.pem --key AuthKey.p8 \
//        --key-id K --team-id T --topic com.example.parent --tokens tokens.txt [--timeout 120]
//
// Prints one JSON line at the end: sent (answered 200), failed (an error answer or an
// error of the request), failed_reasons, unanswered (neither, when the timeout struck),
// seconds (from just before the first send to the last answer, or to the timeout),
// finished. The timeout is hard: when it strikes, what was counted is printed and the
// process exits, whatever node-apn still has pending.
//
// One provider.send() per token, each with its own Notification (its own collapse id, so
// that the server can tell a notification sent twice): the same requests as one send()
// with the array of tokens, which maps client.write over it, and it lets the answers be
// counted as they come.
import fs from 'node:fs';
import { createRequire } from 'node:module';
import crypto from 'node:crypto';
import process from 'node:process';

const require = createRequire(import.meta.url);
const apn = require('@parse/node-apn');

const opts = { url: null, ca: null, key: null, 'key-id': null, 'team-id': null, topic: null, tokens: null, timeout: '120' };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i += 2) {
  const name = argv[i].replace(/^--/, '');
  if (!(name in opts) || i + 1 >= argv.length) {
    console.error(`usage: unknown or incomplete option ${argv[i]}`);
    process.exit(2);
  }
  opts[name] = argv[i + 1];
}
for (const name of Object.keys(opts)) {
  if (opts[name] === null) {
    console.error(`usage: --${name} is required`);
    process.exit(2);
  }
}
const timeoutS = Number(opts.timeout);
const where = new URL(opts.url);
const tokens = fs.readFileSync(opts.tokens, 'utf8').split(/\s+/).filter(Boolean);

const provider = new apn.Provider({
  token: { key: opts.key, keyId: opts['key-id'], teamId: opts['team-id'] },
  production: false,
  address: where.hostname,
  port: Number(where.port || 443),
  ca: opts.ca,
});

let sent = 0;
let failed = 0;
const reasons = {};
let lastAnswer = 0;
let reported = false;
const t0 = process.hrtime.bigint();
const sinceStart = () => Number(process.hrtime.bigint() - t0) / 1e9;

function reasonOf(failure) {
  if (failure && failure.response && failure.response.reason) {
    return `${failure.status} ${failure.response.reason}`;
  }
  if (failure && failure.error) return String(failure.error.message || failure.error).slice(0, 160);
  return String(failure).slice(0, 160);
}

function report(finished) {
  if (reported) return;
  reported = true;
  const line = JSON.stringify({
    client: '@parse/node-apn',
    n: tokens.length,
    sent,
    failed,
    failed_reasons: reasons,
    unanswered: tokens.length - sent - failed,
    seconds: finished ? lastAnswer : sinceStart(),
    last_answer_s: lastAnswer,
    finished,
  });
  process.stdout.write(`${line}\n`, () => process.exit(0));
}

const timer = setTimeout(() => report(false), timeoutS * 1000);

const sends = tokens.map(async (token) => {
  const note = new apn.Notification();
  note.topic = opts.topic;
  note.alert = {
    title: 'Follow-up from Dr. Chen',
    body: "How is Maya's fever today? Reply here if anything changed.",
  };
  note.sound = 'default';
  note.payload = { type: 'follow_up' };
  note.pushType = 'alert';
  note.priority = 10;
  note.collapseId = crypto.randomUUID();
  let result;
  try {
    result = await provider.send(note, token);
  } catch (err) {
    result = { sent: [], failed: [{ error: err }] };
  }
  sent += result.sent.length;
  failed += result.failed.length;
  for (const failure of result.failed) {
    const reason = reasonOf(failure);
    reasons[reason] = (reasons[reason] || 0) + 1;
  }
  lastAnswer = sinceStart();
});

Promise.all(sends).then(() => {
  clearTimeout(timer);
  report(true);
});
