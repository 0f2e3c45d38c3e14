// Shared plumbing of the scenario scripts: options, JSON-line output, waits
// with timeouts, and a watchdog so that every script always exits.
//
// Protocol with the Python test: each line on stdout is one JSON object with
// an "event" key. A scenario ends with {"event": "done", ...} and exit code 0,
// or {"event": "fail", "error": "..."} and exit code 1. Lines on stdin are
// JSON objects too (replies to requests such as a fresh token).
//
// --format json|protobuf (default json) picks the SDK build, and with it the
// wire format. Payloads are JSON either way: scenarios pass plain values
// through encodeData() and read received ones with decodeData() (or the
// publication()/clientInfo() helpers), so their output is the same in both.

import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import WebSocket from 'ws';

export const FORMATS = ['json', 'protobuf'];
const BUILDS = { json: 'centrifuge', protobuf: 'centrifuge/build/protobuf' };

// Set by run() from --format before the scenario starts.
let format = 'json';
let Centrifuge = null;

export function currentFormat() {
  return format;
}

async function loadSdk(name) {
  if (!FORMATS.includes(name)) {
    throw new Error(`--format must be one of ${FORMATS.join(', ')}, not ${JSON.stringify(name)}`);
  }
  format = name;
  ({ Centrifuge } = await import(BUILDS[name]));
}

const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder('utf-8', { fatal: true });

// An outgoing payload (publish, rpc data): JSON as it is, UTF-8 JSON bytes
// over Protobuf.
export function encodeData(value) {
  if (format !== 'protobuf') return value;
  return textEncoder.encode(JSON.stringify(value));
}

// A received payload as a JSON value. Over Protobuf it is bytes, and an
// absent one decodes as empty bytes (proto3 has no "unset"): undefined then.
export function decodeData(data) {
  if (!(data instanceof Uint8Array)) return data;
  if (data.length === 0) return undefined;
  return JSON.parse(textDecoder.decode(data));
}

// A ClientInfo of a publication, join, leave or presence, as in JSON: the
// optional connInfo/chanInfo decoded and left out when empty.
export function clientInfo(info) {
  if (info === undefined || info === null) return info;
  const out = { client: info.client, user: info.user };
  const connInfo = decodeData(info.connInfo);
  if (connInfo !== undefined) out.connInfo = connInfo;
  const chanInfo = decodeData(info.chanInfo);
  if (chanInfo !== undefined) out.chanInfo = chanInfo;
  return out;
}

export function emit(event, fields = {}) {
  process.stdout.write(JSON.stringify({ event, ...fields }) + '\n');
}

// Parse --name value options: all strings; `required` ones must be given,
// `optional` maps names to defaults. --timeout bounds the whole scenario (ms);
// --format picks the SDK build (json or protobuf).
export function options(required, optional = {}) {
  const spec = {
    timeout: { type: 'string', default: '15000' },
    format: { type: 'string', default: 'json' },
  };
  for (const name of required) spec[name] = { type: 'string' };
  for (const [name, value] of Object.entries(optional)) {
    spec[name] = { type: 'string', default: value };
  }
  const { values } = parseArgs({ options: spec, strict: true });
  for (const name of required) {
    if (values[name] === undefined) throw new Error(`missing option --${name}`);
  }
  return values;
}

// Run a scenario: exit 0 with its summary, 1 on an error, 2 when it outlives
// its overall timeout. Open connections never keep the process alive.
export function run(required, optional, scenario) {
  let opts;
  try {
    opts = options(required, optional);
  } catch (e) {
    emit('fail', { error: String(e.message ?? e) });
    process.exit(1);
  }
  const total = Number(opts.timeout);
  setTimeout(() => {
    emit('fail', { error: `scenario timed out after ${total} ms` });
    process.exit(2);
  }, total);
  loadSdk(opts.format)
    .then(() => scenario(opts))
    .then(
      (summary) => {
        emit('done', summary ?? {});
        process.exit(0);
      },
      (e) => {
        emit('fail', { error: describe(e) });
        process.exit(1);
      },
    );
}

export function describe(e) {
  if (e instanceof Error) return `${e.name}: ${e.message}`;
  return JSON.stringify(e);
}

// An SDK error (a reply's {code, message}) as plain fields.
export function sdkError(e) {
  return { code: e?.code ?? null, message: e?.message ?? String(e) };
}

export function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// The next `name` event of an emitter (client or subscription) whose context
// passes `accept`.
export function nextEvent(emitter, name, ms, accept = () => true) {
  let listener;
  const promise = new Promise((resolve) => {
    listener = (ctx) => {
      if (accept(ctx)) resolve(ctx);
    };
    emitter.on(name, listener);
  });
  return withTimeout(promise, ms, `${name} event`).finally(() => emitter.off(name, listener));
}

// A value that resolves once a condition, checked on every `poke()`, holds.
export class Condition {
  constructor(check) {
    this.check = check;
    this.waiters = [];
  }

  poke() {
    const value = this.check();
    if (!value) return;
    for (const resolve of this.waiters.splice(0)) resolve(value);
  }

  wait(ms, what) {
    const value = this.check();
    if (value) return Promise.resolve(value);
    return withTimeout(new Promise((resolve) => this.waiters.push(resolve)), ms, what);
  }
}

export function newClient(url, config = {}) {
  return new Centrifuge(url, { websocket: WebSocket, timeout: 3000, ...config });
}

// Connect and resolve with the `connected` context, failing fast on a
// terminal disconnect.
export async function connect(client, ms = 5000) {
  return settleFirst(client, 'connected', 'disconnected', ms, () => client.connect());
}

// Subscribe and resolve with the `subscribed` context; reject with the
// server's error when the subscription ends instead.
export async function subscribe(sub, ms = 5000) {
  return settleFirst(sub, 'subscribed', 'unsubscribed', ms, () => sub.subscribe());
}

// Start something, then resolve with its `good` event or reject with the
// context of its `bad` event, whichever comes first.
function settleFirst(emitter, good, bad, ms, start) {
  let onGood;
  let onBad;
  const promise = new Promise((resolve, reject) => {
    onGood = resolve;
    onBad = (ctx) => reject(Object.assign(new Error(`${bad}: ${JSON.stringify(ctx)}`), ctx));
    emitter.on(good, onGood);
    emitter.on(bad, onBad);
  });
  start();
  return withTimeout(promise, ms, `${good} event`).finally(() => {
    emitter.off(good, onGood);
    emitter.off(bad, onBad);
  });
}

// A publication context with its data decoded. Over Protobuf, absent tags
// arrive as an empty map: left out, as over JSON.
export function publication(ctx) {
  const out = { channel: ctx.channel, data: decodeData(ctx.data) };
  if (ctx.offset !== undefined) out.offset = ctx.offset;
  if (ctx.info !== undefined) out.info = clientInfo(ctx.info);
  if (ctx.tags !== undefined && Object.keys(ctx.tags).length > 0) out.tags = ctx.tags;
  return out;
}

export function subscribed(ctx) {
  return {
    channel: ctx.channel,
    recoverable: ctx.recoverable,
    positioned: ctx.positioned,
    streamPosition: ctx.streamPosition ?? null,
    wasRecovering: ctx.wasRecovering,
    recovered: ctx.recovered,
    hasRecoveredPublications: ctx.hasRecoveredPublications,
  };
}

// Requests to the test over stdin: emit a request line, wait for the answer.
let stdinLines = null;
const answers = [];
const askers = [];

function startStdin() {
  if (stdinLines !== null) return;
  stdinLines = createInterface({ input: process.stdin });
  stdinLines.on('line', (line) => {
    if (!line.trim()) return;
    const message = JSON.parse(line);
    const asker = askers.shift();
    if (asker) asker(message);
    else answers.push(message);
  });
  // Do not keep the process alive for stdin alone.
  process.stdin.unref?.();
}

export function ask(event, fields, ms, what) {
  startStdin();
  emit(event, fields);
  const ready = answers.shift();
  if (ready !== undefined) return Promise.resolve(ready);
  let resolver;
  const promise = new Promise((resolve) => {
    resolver = resolve;
    askers.push(resolve);
  });
  return withTimeout(promise, ms, what).catch((e) => {
    const index = askers.indexOf(resolver);
    if (index >= 0) askers.splice(index, 1);
    throw e;
  });
}
