// Subscribe to a channel and report, one JSON line each, the client's and the
// subscription's life: connecting, connected, subscribed, every publication.
// Ends after --count publications. With --refresh ask, the getToken callback
// asks the test for a fresh connection token over stdin ({"event": "token"}
// out, {"token": "..."} in), as a browser would ask its backend.
//
//   node subscriber.mjs --url WS_URL --token JWT --channel news --count 2 [--format protobuf]
import {
  Condition,
  ask,
  emit,
  newClient,
  nextEvent,
  publication,
  run,
  subscribed,
} from './lib.mjs';

run(['url', 'token', 'channel', 'count'], { refresh: 'none' }, async (opts) => {
  const count = Number(opts.count);
  const config = { token: opts.token, minReconnectDelay: 100, maxReconnectDelay: 1000 };
  let tokenRequests = 0;
  if (opts.refresh === 'ask') {
    config.getToken = async () => {
      tokenRequests += 1;
      const answer = await ask('token', { n: tokenRequests }, 5000, 'a fresh token');
      return answer.token;
    };
  }
  const client = newClient(opts.url, config);
  const clients = [];
  const subscriptions = [];
  const publications = [];
  const enough = new Condition(() => publications.length >= count);

  client.on('connecting', (ctx) => emit('connecting', { code: ctx.code, reason: ctx.reason }));
  client.on('disconnected', (ctx) => emit('disconnected', { code: ctx.code, reason: ctx.reason }));
  client.on('error', (ctx) => emit('error', { type: ctx.type, error: ctx.error }));
  client.on('connected', (ctx) => {
    clients.push(ctx.client);
    emit('connected', { client: ctx.client });
  });

  const sub = client.newSubscription(opts.channel);
  sub.on('subscribing', (ctx) => emit('subscribing', { code: ctx.code, reason: ctx.reason }));
  sub.on('error', (ctx) => emit('sub_error', { type: ctx.type, error: ctx.error }));
  sub.on('subscribed', (ctx) => {
    const fields = subscribed(ctx);
    subscriptions.push(fields);
    emit('subscribed', fields);
  });
  sub.on('publication', (ctx) => {
    const pub = publication(ctx);
    publications.push(pub);
    emit('publication', pub);
    enough.poke();
  });

  // As apps usually do: subscribe and connect at once, so the SDK sends the
  // subscribe command in the same frame as connect.
  const ready = nextEvent(sub, 'subscribed', 5000);
  sub.subscribe();
  client.connect();
  await ready;
  await enough.wait(Number(opts.timeout) - 500, `${count} publications`);
  client.disconnect();
  return { clients, subscriptions, publications, tokenRequests };
});
