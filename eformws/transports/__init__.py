"""The ways clients connect over WebSocket: what every connection shares (gateway), the
legacy JSON namespaces (legacy) and the WAMP router (wamp/), with their rate limits and origins."""
