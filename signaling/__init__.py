"""The I/O edge: the aiohttp server, WebSocket sessions, the REST API, auth and metrics."""
