"""Glue between Starlette WebSockets and the hub: thin, in one order: decode, act, flush."""
