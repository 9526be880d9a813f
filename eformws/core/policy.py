"""Who may do what, decided in one place: which namespaces and rooms a session may use and
receive, and whether it may publish, call a privileged procedure, see sensitive fields or
manage sessions. Every transport and the HTTP API ask this; none compares roles itself."""

from __future__ import annotations

from dataclasses import dataclass

ROLES = ("admin", "staff", "kiosk")  # what a session's role is one of


@dataclass(frozen=True)
class Policy:
    """The `auth` section's role lists. A session is anything with `role` and `kiosk_id`;
    None (no session) is allowed only what needs no session."""

    restricted_roles: frozenset[str] = frozenset({"kiosk"})
    broadcast_roles: frozenset[str] = frozenset({"admin"})
    sensitive_roles: frozenset[str] = frozenset({"admin", "staff"})
    session_admin_roles: frozenset[str] = frozenset({"admin"})

    @classmethod
    def from_config(cls, config) -> "Policy":
        return cls(
            restricted_roles=frozenset(config.get("auth", "restricted_roles")),
            broadcast_roles=frozenset(config.get("auth", "broadcast_roles")),
            sensitive_roles=frozenset(config.get("auth", "sensitive_roles")),
            session_admin_roles=frozenset(config.get("auth", "session_admin_roles")),
        )

    def may_use(self, session, namespace) -> bool:
        """Connect to (and get the broadcasts of) a namespace: any client where it needs no
        session, else a session whose role is one of the namespace's."""
        return not namespace.require_auth or (session is not None and session.role in namespace.roles)

    def may_join(self, session, namespace, room: str) -> bool:
        """Join (and get the messages of) a room: any, except for restricted roles (kiosks),
        which have the namespace's default room and their own kiosk's room only."""
        if session is None or session.role not in self.restricted_roles:
            return True
        return room == namespace.default_room or (session.kiosk_id is not None and room == session.kiosk_id)

    def may_receive(self, session, namespace, room: str | None) -> bool:
        """Get a message addressed to the namespace (room None) or to one of its rooms."""
        return self.may_use(session, namespace) and (room is None or self.may_join(session, namespace, room))

    def may_publish(self, session) -> bool:
        """Broadcast or emit: over HTTP, a WAMP PUBLISH or the privileged procedures."""
        return session is not None and session.role in self.broadcast_roles

    def may_call(self, session, privileged: bool) -> bool:
        """Call a procedure; a privileged one (eform.broadcast, eform.emit) as publishing."""
        return not privileged or self.may_publish(session)

    def sees_sensitive(self, session) -> bool:
        """Get events with their sensitive fields (else they are removed)."""
        return session is not None and session.role in self.sensitive_roles

    def may_manage_sessions(self, session) -> bool:
        """List, create and revoke sessions."""
        return session is not None and session.role in self.session_admin_roles

    def abilities(self, session) -> dict[str, bool]:
        """What the session's role may do, by name (GET /api/websocket/session's `may`)."""
        return {
            "broadcast": self.may_publish(session),
            "emit": self.may_publish(session),  # POST /api/websocket/events takes the same
            "manage_sessions": self.may_manage_sessions(session),
            "see_sensitive": self.sees_sensitive(session),
        }
