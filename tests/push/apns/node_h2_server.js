// A scriptable HTTP/2-over-TLS server on Node's built-in http2 module (nghttp2 inside): the
// second implementation, independent of ours and of the h2 package, that the APNs client is held
// to (tests/push/apns/node_server.py starts it). Node's own modules only: no npm packages.
//
//   node node_h2_server.js CONFIG_JSON
//
// CONFIG_JSON: {key, cert: PEM file paths; settings: Node http2 settings (maxConcurrentStreams,
// initialWindowSize, ...); delayMs: hold each answer this long; answer: "apns" (200 with an
// apns-id) or "varied" (statuses, headers and bodies that vary with the device, to exercise
// HPACK); rules: {device token: [action, ...]}, each request for the token taking the next
// action (the last one repeats); goawayAfter: K, GOAWAY naming the K-th request of a connection
// as the last stream processed, the later ones never answered}.
// Actions: "ok" (the answer), "silent" (never answered), "refuse" (RST_STREAM REFUSED_STREAM as
// its headers arrive), "internal" (read whole, then RST_STREAM INTERNAL_ERROR: processed, no
// answer).
//
// Reports one JSON line per event on stdout: listening {port}, session {session}, request
// {session, stream, headers, sensitive, body (base64), action, open}, answered {session, stream,
// status}, refused {session, stream, path}, processed {session, stream}, close {session, stream,
// rstCode}, goaway {session, last}, session-close {session}, pong {seq}. Control lines on stdin (JSON): {cmd:
// "sync", seq} answers pong; {cmd: "set", ...} merges into the config; {cmd: "freeze", ms} says
// frozen, then stops the whole server (no frame read or written, PING unanswered) for that long;
// {cmd: "ping"} PINGs
// every connection and reports pinged {session, ok}.
'use strict';

const fs = require('fs');
const http2 = require('http2');
const readline = require('readline');

const C = http2.constants;
const config = JSON.parse(process.argv[2]);
const rules = new Map(Object.entries(config.rules || {}));
const sessions = new Set();
let sessionCount = 0;

function emit(event) {
  process.stdout.write(JSON.stringify(event) + '\n');
}

function uuid(n) {
  const hex = BigInt(n).toString(16).padStart(32, '0');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

function deviceOf(path) {
  return (path || '').split('/').pop();
}

function actionFor(token) {
  const list = rules.get(token);
  if (!list || list.length === 0) return 'ok';
  return list.length > 1 ? list.shift() : list[0];
}

// What tests/push/apns/test_node_conformance.py's answer_for(i) expects.
function varied(i) {
  const headers = {
    'apns-id': uuid(i),
    'apns-unique-id': uuid(i % 37 + 10000),
    'x-shard': ['east', 'west', 'north'][i % 3],
    'x-trace': `t${i % 5}`,
    [http2.sensitiveHeaders]: ['x-trace'],
  };
  if (i % 5 === 0) {
    return [410, headers, JSON.stringify({reason: 'Unregistered', timestamp: 1700000000000 + i})];
  }
  if (i % 7 === 0) {
    headers['retry-after'] = String(i % 11);
    return [400, headers, JSON.stringify({reason: 'BadTopic'})];
  }
  return [200, headers, ''];
}

function answer(stream, state) {
  if (stream.destroyed || stream.closed) return;
  let status = 200;
  let headers = {'apns-id': `id-${stream.id}`};
  let body = '';
  if (config.answer === 'varied') {
    [status, headers, body] = varied(parseInt(deviceOf(state.path), 16));
  }
  stream.respond({':status': status, ...headers}, {endStream: !body});
  if (body) stream.end(body);
  emit({ev: 'answered', session: state.session, stream: stream.id, status});
  state.done();
}

const server = http2.createSecureServer({
  key: fs.readFileSync(config.key),
  cert: fs.readFileSync(config.cert),
  allowHTTP1: false,
  settings: config.settings || {},
  maxSessionMemory: 1000,
});

server.on('session', (session) => {
  const id = ++sessionCount;
  sessions.add(session);
  session.farmId = id;
  session.requests = 0;
  session.open = 0;
  session.last = null; // the last stream id of our GOAWAY, once sent
  emit({ev: 'session', session: id});
  session.on('error', () => {});
  session.on('close', () => {
    sessions.delete(session);
    emit({ev: 'session-close', session: id});
  });
});

server.on('stream', (stream, headers) => {
  const session = stream.session;
  const id = session.farmId;
  const path = headers[':path'];
  const action = actionFor(deviceOf(path));
  session.open += 1;
  const state = {session: id, path, done: () => maybeClose(session)};
  stream.on('error', () => {});
  stream.on('close', () => {
    session.open -= 1;
    emit({ev: 'close', session: id, stream: stream.id, rstCode: stream.rstCode});
    maybeClose(session);
  });
  if (action === 'refuse') {
    emit({ev: 'refused', session: id, stream: stream.id, path});
    stream.close(C.NGHTTP2_REFUSED_STREAM);
    return;
  }
  session.requests += 1;
  if (config.goawayAfter && session.requests === config.goawayAfter && session.last === null) {
    session.last = stream.id;
    session.goaway(C.NGHTTP2_NO_ERROR, stream.id, Buffer.from('bye'));
    emit({ev: 'goaway', session: id, last: stream.id});
  }
  const chunks = [];
  stream.on('data', (chunk) => chunks.push(chunk));
  stream.on('end', () => {
    const body = Buffer.concat(chunks);
    const past = session.last !== null && stream.id > session.last;
    emit({ev: 'request', session: id, stream: stream.id, headers,
          sensitive: headers[http2.sensitiveHeaders] || [], body: body.toString('base64'),
          action: past ? 'past-goaway' : action, open: session.open});
    if (past) {
      stream.close(C.NGHTTP2_REFUSED_STREAM); // never processed, as the GOAWAY said
    } else if (action === 'internal') {
      emit({ev: 'processed', session: id, stream: stream.id});
      stream.close(C.NGHTTP2_INTERNAL_ERROR);
    } else if (action !== 'silent') {
      if (config.delayMs) setTimeout(answer, config.delayMs, stream, state);
      else answer(stream, state);
    }
  });
});

// After our GOAWAY, the connection closes once every stream it had is done.
function maybeClose(session) {
  if (session.last !== null && session.open === 0 && !session.closed && !session.destroyed) {
    session.close();
  }
}

const control = readline.createInterface({input: process.stdin});
control.on('line', (line) => {
  const cmd = JSON.parse(line);
  if (cmd.cmd === 'sync') {
    emit({ev: 'pong', seq: cmd.seq});
  } else if (cmd.cmd === 'set') {
    delete cmd.cmd;
    if (cmd.rules) {
      for (const [token, list] of Object.entries(cmd.rules)) rules.set(token, list);
      delete cmd.rules;
    }
    Object.assign(config, cmd);
  } else if (cmd.cmd === 'freeze') {
    emit({ev: 'frozen', ms: cmd.ms});
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, cmd.ms);
  } else if (cmd.cmd === 'ping') {
    for (const session of sessions) {
      session.ping(Buffer.from('nodeping'), (err) => {
        emit({ev: 'pinged', session: session.farmId, ok: !err});
      });
    }
  }
});
control.on('close', () => {
  for (const session of sessions) session.destroy();
  server.close();
  process.exit(0);
});

server.listen(0, '127.0.0.1', () => {
  emit({ev: 'listening', port: server.address().port});
});
