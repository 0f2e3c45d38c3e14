import asyncio

from centrifuge import Client, SubscriptionEventHandler, PublicationContext

from tests.conftest import Running, wait_for


async def test_sdk_subscribe_publish(server: Running) -> None:
    client = Client(server.ws_url, token=server.token("alice"))
    got = []

    class H(SubscriptionEventHandler):
        async def on_publication(self, ctx: PublicationContext) -> None:
            got.append(ctx.pub.data)

    sub = client.new_subscription("chat:lobby", H())
    await client.connect()
    await sub.subscribe()
    await sub.ready_to_publish() if hasattr(sub, "ready_to_publish") else None
    await sub.publish({"text": "hi"})
    await wait_for(lambda: got)
    assert got == [{"text": "hi"}]
    await client.disconnect()
