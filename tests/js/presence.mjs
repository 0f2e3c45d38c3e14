// Two users in one channel: presence, presence stats, and the join and leave
// events one sees of the other.
//
//   node presence.mjs --url WS_URL --token1 JWT_A --token2 JWT_B --channel chat:room \
//     [--format protobuf]
import { clientInfo, connect, emit, newClient, nextEvent, run, subscribe } from './lib.mjs';

function clientsOf(result) {
  // {client id: {client, user}} -> sorted [{client, user}] without extra fields
  return Object.values(result.clients)
    .map((c) => ({ client: c.client, user: c.user }))
    .sort((a, b) => a.user.localeCompare(b.user));
}

run(['url', 'token1', 'token2', 'channel'], {}, async ({ url, token1, token2, channel }) => {
  const first = newClient(url, { token: token1 });
  const firstId = (await connect(first)).client;
  const firstSub = first.newSubscription(channel);
  const joins = [];
  const leaves = [];
  firstSub.on('join', (ctx) => {
    const info = clientInfo(ctx.info);
    joins.push(info);
    emit('join', { info });
  });
  firstSub.on('leave', (ctx) => {
    const info = clientInfo(ctx.info);
    leaves.push(info);
    emit('leave', { info });
  });
  await subscribe(firstSub);
  emit('subscribed', { who: 'first', client: firstId });

  const second = newClient(url, { token: token2 });
  const secondId = (await connect(second)).client;
  const secondSub = second.newSubscription(channel);
  const joined = nextEvent(firstSub, 'join', 5000, (ctx) => ctx.info.client === secondId);
  await subscribe(secondSub);
  emit('subscribed', { who: 'second', client: secondId });
  const join = clientInfo((await joined).info);

  const presence = {
    first: clientsOf(await firstSub.presence()),
    second: clientsOf(await secondSub.presence()),
  };
  emit('presence', presence);
  const stats = {
    first: await firstSub.presenceStats(),
    second: await second.presenceStats(channel),
  };
  emit('presence_stats', stats);

  // The second user goes away altogether: the first one sees a leave.
  const left = nextEvent(firstSub, 'leave', 5000, (ctx) => ctx.info.client === secondId);
  second.disconnect();
  const leave = clientInfo((await left).info);
  const statsAfter = await firstSub.presenceStats();
  const presenceAfter = clientsOf(await first.presence(channel));
  emit('presence_after', { stats: statsAfter, presence: presenceAfter });

  first.disconnect();
  return {
    clients: { first: firstId, second: secondId },
    join,
    leave,
    joins,
    leaves,
    presence,
    stats,
    statsAfter,
    presenceAfter,
  };
});
