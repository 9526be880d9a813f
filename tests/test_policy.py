"""The one authorizer every transport and the HTTP API ask (eformws/core/policy.py), on its own:
the kiosk-room rule, namespace roles, and who may publish, manage sessions and see
sensitive fields, from the `auth` settings."""

from __future__ import annotations

from dataclasses import dataclass

from eformws.core.policy import Policy
from eformws.runtime.config import load_config


@dataclass
class Session:
    role: str
    kiosk_id: str | None = None


@dataclass
class Namespace:
    require_auth: bool = True
    roles: frozenset = frozenset({"admin", "staff", "kiosk"})
    default_room: str = "lockers"


POLICY = Policy()
KIOSK = Session("kiosk", "kiosk-1")


def test_a_kiosk_may_join_the_default_room_and_its_own_kiosks_room_only():
    ns = Namespace()
    assert [POLICY.may_join(KIOSK, ns, room) for room in ("lockers", "kiosk-1", "kiosk-2", "staff")] == [
        True, True, False, False]


def test_a_kiosk_session_without_a_kiosk_may_join_the_default_room_only():
    assert [POLICY.may_join(Session("kiosk"), Namespace(), room) for room in ("lockers", "kiosk-1")] == [True, False]


def test_staff_admins_and_anonymous_clients_of_an_open_namespace_may_join_any_room():
    open_ns = Namespace(require_auth=False)
    assert all(POLICY.may_join(session, open_ns, "kiosk-7") for session in (Session("staff"), Session("admin"), None))


def test_a_namespace_is_used_by_its_roles_or_by_anyone_when_it_needs_no_session():
    staff_only = Namespace(roles=frozenset({"staff"}))
    assert (POLICY.may_use(Session("staff"), staff_only), POLICY.may_use(KIOSK, staff_only),
            POLICY.may_use(None, staff_only)) == (True, False, False)
    assert POLICY.may_use(None, Namespace(require_auth=False))


def test_a_message_is_received_where_the_session_may_use_the_namespace_and_join_the_room():
    ns = Namespace()
    assert (POLICY.may_receive(KIOSK, ns, None), POLICY.may_receive(KIOSK, ns, "kiosk-1"),
            POLICY.may_receive(KIOSK, ns, "kiosk-2")) == (True, True, False)
    assert not POLICY.may_receive(KIOSK, Namespace(roles=frozenset({"staff"})), None)


def test_the_auth_settings_decide_who_publishes_manages_sessions_and_sees_sensitive_fields():
    config = load_config(overrides={("auth", "broadcast_roles"): ["staff"], ("auth", "session_admin_roles"): ["staff"],
                                    ("auth", "sensitive_roles"): ["admin"]}, environ={})
    policy = Policy.from_config(config)
    assert policy.abilities(Session("staff")) == {
        "broadcast": True, "emit": True, "manage_sessions": True, "see_sensitive": False}
    assert policy.abilities(Session("admin")) == {
        "broadcast": False, "emit": False, "manage_sessions": False, "see_sensitive": True}


def test_privileged_procedures_are_called_by_those_who_may_publish_and_the_others_by_anyone():
    assert (POLICY.may_call(KIOSK, False), POLICY.may_call(KIOSK, True), POLICY.may_call(Session("admin"), True)) == (
        True, False, True)


def test_no_session_may_publish_manage_sessions_or_see_sensitive_fields():
    assert POLICY.abilities(None) == {"broadcast": False, "emit": False, "manage_sessions": False,
                                      "see_sensitive": False}
