// Refusals the user sees as errors, while the connection stays up:
// publishing where only the server may (103), subscribing to a namespace that
// does not exist (102), presence and history without the right (103).
//
//   node errors.mjs --url WS_URL --token JWT [--format protobuf]
import { connect, emit, encodeData, newClient, run, sdkError, subscribe } from './lib.mjs';

async function refusal(promise) {
  try {
    const value = await promise;
    return { ok: true, value };
  } catch (e) {
    return { ok: false, ...sdkError(e) };
  }
}

run(['url', 'token'], {}, async ({ url, token }) => {
  const client = newClient(url, { token });
  const clientId = (await connect(client)).client;
  const disconnects = [];
  client.on('disconnected', (ctx) => disconnects.push(ctx));
  client.on('connecting', (ctx) => disconnects.push(ctx));

  const results = {};
  results.publishNoNamespace = await refusal(
    client.publish('news', encodeData({ text: 'not allowed' })),
  );
  emit('result', { publishNoNamespace: results.publishNoNamespace });

  const unknown = client.newSubscription('unknown:x');
  try {
    const ctx = await subscribe(unknown);
    results.subscribeUnknown = { ok: true, value: ctx };
  } catch (e) {
    results.subscribeUnknown = { ok: false, code: e.code, reason: e.reason, state: unknown.state };
  }
  emit('result', { subscribeUnknown: results.subscribeUnknown });

  // chat: lets subscribers, and only them, publish and read presence.
  results.publishNotSubscribed = await refusal(client.publish('chat:room', encodeData({ text: 'hi' })));
  results.presenceNotSubscribed = await refusal(client.presence('chat:room'));
  results.historyNoNamespace = await refusal(client.history('news', { limit: 10 }));
  emit('result', results);

  const state = client.state;
  const seen = [...disconnects];
  client.disconnect();
  return { client: clientId, state, disconnects: seen, ...results };
});
