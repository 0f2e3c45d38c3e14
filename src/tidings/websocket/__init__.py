"""The WebSocket protocol without I/O: the handshake policy, the frame reader, frame building.

``tidings.transport`` wires these to sockets; everything here takes bytes and
returns bytes or events, and is tested with byte literals.
"""
