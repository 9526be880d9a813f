"""Meta events of the broker and the dealer (a subscription or registration made, joined,
left, deleted): what they tell the router, which publishes them (see meta.py)."""

from __future__ import annotations


class MetaEvents:
    """`on_meta(topic, args)`, set by the router, hears of each meta event; None: nobody."""

    on_meta = None

    def _meta(self, topic: str, session, detail) -> None:
        """Tell the router of a meta event: `session` is the WAMP session id or the
        connection whose session it is; `detail` an id, or a callable making the details."""
        if self.on_meta is None:
            return
        session_id = session if session is None or isinstance(session, int) else session.wamp.id
        self.on_meta(topic, [session_id, detail() if callable(detail) else detail])
