"""The servers under test, each started in its own process by the orchestrator.

Every peer serves WebSocket clients on loopback and reads control commands
(publish, ack, stats, gc) as JSON lines on stdin; it answers on stdout. The
publisher runs inside the server's event loop, as an app's own publish would,
so ingress (HTTP, broker) is the same, zero, for every design.
"""

PEERS = ("tidings", "fastapi", "socketio", "bare")
