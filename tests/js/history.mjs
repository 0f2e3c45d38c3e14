// Publish --count messages to a channel, then read its history several ways.
//
//   node history.mjs --url WS_URL --token JWT --channel chat:room --count 5 [--format protobuf]
import {
  Condition,
  connect,
  decodeData,
  emit,
  encodeData,
  newClient,
  run,
  subscribe,
} from './lib.mjs';

function brief(result) {
  return {
    offset: result.offset,
    epoch: result.epoch,
    publications: result.publications.map((p) => ({
      data: decodeData(p.data),
      offset: p.offset,
      user: p.info?.user ?? null,
    })),
  };
}

run(['url', 'token', 'channel', 'count'], {}, async ({ url, token, channel, count }) => {
  const n = Number(count);
  const client = newClient(url, { token });
  await connect(client);
  const sub = client.newSubscription(channel);
  const live = [];
  const all = new Condition(() => live.length >= n);
  sub.on('publication', (ctx) => {
    live.push(ctx.offset);
    all.poke();
  });
  const position = (await subscribe(sub)).streamPosition;
  emit('subscribed', { streamPosition: position });

  for (let i = 1; i <= n; i++) await sub.publish(encodeData({ seq: i }));
  await all.wait(5000, `${n} publications`);
  emit('published', { offsets: live });

  const results = {
    all: brief(await sub.history({ limit: -1 })),
    first3: brief(await sub.history({ limit: 3 })),
    last2Reversed: brief(await sub.history({ limit: 2, reverse: true })),
    since2: brief(await sub.history({ since: { offset: 2, epoch: position.epoch }, limit: 10 })),
    positionOnly: brief(await sub.history()),
  };
  emit('history', results);
  client.disconnect();
  return { streamPosition: position, live, ...results };
});
