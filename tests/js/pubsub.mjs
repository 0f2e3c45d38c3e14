// Connect with a JWT, subscribe to a channel, publish to it and receive the
// publication back (the publisher is a subscriber too).
//
//   node pubsub.mjs --url WS_URL --token JWT --channel chat:room [--format protobuf]
import {
  connect,
  emit,
  encodeData,
  nextEvent,
  newClient,
  publication,
  run,
  subscribe,
  subscribed,
} from './lib.mjs';

run(['url', 'token', 'channel'], {}, async ({ url, token, channel }) => {
  const client = newClient(url, { token });
  const connected = await connect(client);
  emit('connected', { client: connected.client, transport: connected.transport });

  const sub = client.newSubscription(channel);
  emit('subscribed', subscribed(await subscribe(sub)));

  const data = { text: 'hello from js', n: 1 };
  const received = nextEvent(sub, 'publication', 5000);
  const reply = await sub.publish(encodeData(data));
  emit('published', { reply });
  const pub = publication(await received);
  emit('publication', pub);

  client.disconnect();
  return { client: connected.client, publication: pub };
});
