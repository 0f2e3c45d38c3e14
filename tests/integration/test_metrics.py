"""/metrics reports what the hub did, in the Prometheus text format."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Running
from tests.integration.wsclient import ws_client


async def scrape(server: Running) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def test_metrics_count_connections_commands_and_publications(server: Running) -> None:
    async with ws_client(server.ws_url) as client:
        await client.connect(server.token("alice"))
        await client.subscribe("chat:m")
        denied = await client.call("publish", {"channel": "news", "data": {}})
        assert denied["error"]["code"] == 103
        await server.tidings.publish("chat:m", {"n": 1})
        await client.publication("chat:m", {"n": 1})

        samples = await scrape(server)
        assert samples[("tidings_connections", ())] == 1
        assert samples[("tidings_subscriptions", ())] == 1
        assert samples[("tidings_commands_total", (("method", "subscribe"), ("result", "ok")))] == 1
        assert samples[("tidings_commands_total", (("method", "publish"), ("result", "103")))] == 1
        assert samples[("tidings_publications_in_total", ())] == 1
        assert samples[("tidings_publications_out_total", ())] == 1
        assert samples[("tidings_fanout_seconds_count", ())] == 1
        assert samples[("tidings_bytes_out_total", ())] > 0
        assert samples[("tidings_broker_ready", ())] == 1
        assert ("process_resident_memory_bytes", ()) in samples

    async with ws_client(server.ws_url) as intruder:
        await intruder.send({"id": 1, "connect": {"token": "not-a-jwt"}})
        assert await intruder.closed() == 3500
    samples = await scrape(server)
    assert samples[("tidings_auth_failures_total", ())] == 1
    assert samples[("tidings_disconnects_total", (("code", "3500"),))] == 1
    assert samples[("tidings_connections", ())] == 0
