"""From a published message to the frames a connection gets: the hub (registry and
`deliver`), the one publisher, the feed from the event log, replay and catch-up, redaction."""
