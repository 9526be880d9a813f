"""The broker: subscriptions (exact, prefix, wildcard) shared by sessions, which sessions a
delivered message reaches and on which topic; PUBLISH to `eform.*` as a broadcast, and to
an application's topics (the permission table) with its payload untouched."""

from __future__ import annotations

import base64
import hashlib
from typing import Any, Iterator

import cbor2
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from eformws.core import wire
from eformws.core.message import Message
from eformws.delivery.broadcasts import BroadcastError, check_broadcast
from eformws.transports.wamp.errors import (
    INVALID_ARGUMENT,
    MAX_ID,
    NOT_AUTHORIZED,
    SUBSCRIPTION_LIMIT,
    WampError,
    named_id,
    new_id,
)
from eformws.transports.wamp.events import MetaEvents
from eformws.transports.wamp.permissions import (
    DEFAULT_PERMISSIONS,
    Permissions,
    is_own,
    is_reserved,
    may_name_own,
    role_of,
)
from eformws.transports.wamp.topics import (
    EXACT,
    PREFIX_MATCH,
    Topic,
    target_of,
    topics_of,
    wildcard_matches,
)
from eformws.transports.wamp.wildcards import WildcardIndex

log = Logger(namespace="eformws.wamp")

META = "wamp"  # the key of this broker's annotations in `Message.meta`
MAX_RETAINED = 10_000  # topics whose last retained event is kept; past it, or past ...
MAX_RETAINED_BYTES = 64 * 1024 * 1024  # ... this many bytes of them (CBOR), the longest kept go
RETAINED_PER_SUBSCRIBE = 100  # retained events one SUBSCRIBE with get_retained gets, at most, and ...
RETAINED_BYTES_PER_SUBSCRIBE = 1024 * 1024  # ... at most this many bytes of them
MAX_AUDIENCE = 1000  # entries of each eligible/exclude list of a publication


class Subscription:
    """One (topic, match) of the router, shared by every session subscribed to it."""

    __slots__ = ("id", "topic", "match", "connections", "created")

    def __init__(self, id: int, topic: str, match: str):
        self.id = id
        self.topic = topic
        self.match = match
        self.connections: set = set()
        self.created = wire.js_timestamp()

    def meta_details(self) -> dict:
        """What the meta API tells of it (wamp.subscription.get, on_create)."""
        return {"id": self.id, "created": self.created, "uri": self.topic, "match": self.match}

    def details(self, topic: Topic) -> dict:
        """EVENT details: the concrete topic, when the subscription is a pattern."""
        return {} if self.match == EXACT else {"topic": topic.uri}


class Delivery:
    """What one message means to WAMP sessions: its publication id, and for each recipient
    connection the subscriptions it matched, each with the first topic it may see; for an
    application's publication, the publisher when it is disclosed."""

    __slots__ = ("message", "publication", "matches", "application", "publisher")

    def __init__(self, message: Message, publication: int, matches: dict, application: bool = False,
                 publisher: dict | None = None):
        self.message = message
        self.publication = publication
        self.matches: dict[Any, list[tuple[Subscription, Topic]]] = matches
        self.application = application  # an application's publication: args and kwargs as published
        self.publisher = publisher

    def details(self, subscription: Subscription, topic: Topic) -> dict:
        details = subscription.details(topic)
        if self.publisher:
            details.update(self.publisher)
        return details


class Broker(MetaEvents):
    def __init__(self, hub, policy, max_subscriptions: int = 100, publisher=None, permissions: Permissions | None = None,
                 retained_store=None):
        self._hub = hub
        self._policy = policy
        self._permissions = permissions or Permissions.parse(DEFAULT_PERMISSIONS)
        self._publisher = publisher  # WebSocketEvents: PUBLISH goes out as any broadcast
        self._max_subscriptions = max_subscriptions  # per connection (one session at a time)
        self._by_key: dict[tuple[str, str], Subscription] = {}
        self._by_id: dict[int, Subscription] = {}
        self._exact: dict[str, Subscription] = {}
        self._prefix: dict[str, Subscription] = {}
        self._prefix_lengths: dict[int, int] = {}  # length -> prefix subscriptions of that length
        self._wildcard = WildcardIndex()  # pattern -> subscription
        self._of: dict[Any, set[Subscription]] = {}  # connection -> its subscriptions
        self._retained: dict[str, Retained] = {}  # topic -> its last retained publication, oldest first
        self._retained_bytes = 0
        self._retained_store = retained_store  # RedisRetained: for processes that start later; None: none
        self._delivery: Delivery | None = None

    # -- subscriptions ------------------------------------------------------------------

    @property
    def subscription_count(self) -> int:
        return len(self._by_id)

    def subscribe(self, connection, topic: str, match: str) -> Subscription:
        """Add `connection` to the subscription for (topic, match), made on first use; the
        same one again when it is already in it. A connection already in `max_subscriptions`
        others gets `WampError` `eform.error.subscription_limit`."""
        subscription = self._by_key.get((match, topic))
        if subscription is not None and connection in subscription.connections:
            return subscription
        if not may_name_own(topic, match) and not self._permissions.may_ever(
                role_of(connection), "subscribe", topic, match):
            raise WampError(NOT_AUTHORIZED, f"this session may not subscribe to {topic!r} ({match} match)")
        if len(self._of.get(connection, ())) >= self._max_subscriptions:
            limit = self._max_subscriptions
            raise WampError(SUBSCRIPTION_LIMIT, f"Subscription limit reached: at most {limit} subscriptions per session",
                            limit=limit)
        if subscription is None:
            subscription_id = named_id(f"{match} {topic}")  # the same on every process of the deployment
            while subscription_id in self._by_id:  # two names, one id (once in 2^53): this one's is random
                subscription_id = new_id()
            subscription = Subscription(subscription_id, topic, match)
            self._meta("wamp.subscription.on_create", connection, subscription.meta_details)
            self._by_key[(match, topic)] = self._by_id[subscription_id] = subscription
            if match == EXACT:
                self._exact[topic] = subscription
            elif match == PREFIX_MATCH:
                self._prefix[topic] = subscription
                self._prefix_lengths[len(topic)] = self._prefix_lengths.get(len(topic), 0) + 1
            else:
                self._wildcard[topic] = subscription
        subscription.connections.add(connection)
        self._of.setdefault(connection, set()).add(subscription)
        self._meta("wamp.subscription.on_subscribe", connection, subscription.id)
        return subscription

    def unsubscribe(self, connection, subscription_id: int) -> bool:
        """Take `connection` out of a subscription; False when it was not in it."""
        subscription = self._by_id.get(subscription_id)
        if subscription is None or connection not in subscription.connections:
            return False
        self._leave(connection, subscription, connection)
        mine = self._of.get(connection)
        if mine is not None:
            mine.discard(subscription)
            if not mine:
                del self._of[connection]
        return True

    def drop(self, connection, session_id: int | None = None) -> None:
        """Take `connection` out of every subscription (its session, `session_id`, ended)."""
        for subscription in self._of.pop(connection, ()):
            self._leave(connection, subscription, session_id)

    def _leave(self, connection, subscription: Subscription, session) -> None:
        subscription.connections.discard(connection)
        self._meta("wamp.subscription.on_unsubscribe", session, subscription.id)
        if subscription.connections:
            return
        self._meta("wamp.subscription.on_delete", session, subscription.id)
        topic, match = subscription.topic, subscription.match
        del self._by_key[(match, topic)]
        del self._by_id[subscription.id]
        if match == EXACT:
            del self._exact[topic]
        elif match == PREFIX_MATCH:
            del self._prefix[topic]
            left = self._prefix_lengths[len(topic)] - 1
            if left:
                self._prefix_lengths[len(topic)] = left
            else:
                del self._prefix_lengths[len(topic)]
        else:
            del self._wildcard[topic]

    def subscriptions(self) -> list[Subscription]:
        return list(self._by_id.values())

    def subscription(self, subscription_id: int) -> Subscription | None:
        return self._by_id.get(subscription_id)

    def lookup(self, topic: str, match: str) -> Subscription | None:
        return self._by_key.get((match, topic))

    def matching(self, uri: str) -> Iterator[Subscription]:
        """Every subscription `uri` matches: exact, then prefixes, then wildcards."""
        subscription = self._exact.get(uri)
        if subscription is not None:
            yield subscription
        for length in self._prefix_lengths:
            if length <= len(uri):
                subscription = self._prefix.get(uri[:length])
                if subscription is not None:
                    yield subscription
        if self._wildcard:
            yield from self._wildcard.matching(uri)

    # -- the hub's side: who gets a message --------------------------------------------

    def may_receive(self, connection, topic: Topic) -> bool:
        """What a legacy connection of the same session could get (the policy's rule)."""
        namespace = self._hub.namespaces.get(topic.namespace)
        return namespace is not None and self._policy.may_receive(connection.session, namespace, topic.room)

    def delivery_of(self, message: Message) -> Delivery:
        """The delivery `recipients` computed for this message or the message it is the
        redacted copy of (the hub asks for recipients, then for each audience's frames,
        within one `deliver` call), else a new one. One resolution, one publication id."""
        delivery = self._delivery
        if delivery is None or not delivery.message.is_or_redacts(message):
            delivery = self._delivery = self._resolve(message)
        return delivery

    def recipients(self, message: Message) -> list:
        meta = message.meta.get(META)
        if meta is not None and meta.get("retain"):
            self._retain(meta["topic"], message)
        if not self._by_id:
            return []
        self._delivery = self._resolve(message)
        return list(self._delivery.matches)

    def _resolve(self, message: Message) -> Delivery:
        meta = message.meta.get(META) or {}
        if "topic" in meta:
            return self._resolve_application(message, meta)
        excluded = meta.get("exclude")
        per_subscription: dict[Subscription, list[Topic]] = {}
        for topic in topics_of(message):
            for subscription in self.matching(topic.uri):
                per_subscription.setdefault(subscription, []).append(topic)
        matches: dict[Any, list[tuple[Subscription, Topic]]] = {}
        for subscription, topics in per_subscription.items():
            for connection in subscription.connections:
                if connection.id == excluded:
                    continue
                for topic in topics:
                    if self.may_receive(connection, topic):
                        matches.setdefault(connection, []).append((subscription, topic))
                        break
        return Delivery(message, publication_of(message), matches)

    def _resolve_application(self, message: Message, meta: dict) -> Delivery:
        """An application's publication: the sessions subscribed to its topic that may
        subscribe to it (the table) and are eligible (its eligible/exclude lists)."""
        uri = meta["topic"]
        topic = Topic(uri, "", None)
        audience = Audience(meta)
        permissions = self._permissions
        allowed: dict[str | None, bool] = {}  # per role, asked once
        matches: dict[Any, list[tuple[Subscription, Topic]]] = {}
        for subscription in self.matching(uri):
            for connection in subscription.connections:
                role = role_of(connection)
                if role not in allowed:
                    allowed[role] = permissions.allows(role, "subscribe", uri)
                if allowed[role] and audience.includes(connection):
                    matches.setdefault(connection, []).append((subscription, topic))
        return Delivery(message, meta["publication"], matches, True, meta.get("publisher"))

    # -- retained events -------------------------------------------------------------------

    def _retain(self, topic: str, message: Message) -> None:
        """Keep `message` as `topic`'s retained event (each process keeps what the bus
        brings it, so every process has the same), encoded: what it costs is its size, at
        most MAX_RETAINED topics and MAX_RETAINED_BYTES."""
        try:
            retained = Retained.of(message)
        except Exception as e:  # nothing CBOR can carry it as (it was delivered all the same)
            log.info("a publication on {topic} was not retained: {error}", topic=topic, error=str(e)[:200])
            return
        self._keep(topic, retained)

    def _keep(self, topic: str, retained: "Retained") -> None:
        replaced = self._retained.pop(topic, None)
        if replaced is not None:
            self._retained_bytes -= replaced.size
        self._retained[topic] = retained
        self._retained_bytes += retained.size
        while len(self._retained) > MAX_RETAINED or self._retained_bytes > MAX_RETAINED_BYTES:
            oldest = self._retained.pop(next(iter(self._retained)))
            self._retained_bytes -= oldest.size

    def kept_earlier(self, found: dict[str, str]) -> None:
        """What processes that ran before this one retained (RedisRetained's `on_loaded`):
        kept where this process has heard of nothing newer on the topic."""
        for topic, text in found.items():
            if topic in self._retained:
                continue
            try:
                args, kwargs, meta = cbor2.loads(base64.b64decode(text))
                self._keep(topic, Retained(args, kwargs, meta))
            except Exception:
                log.warn("ignored a malformed retained event in redis")

    def retained(self, connection, subscription: Subscription) -> list[tuple["Retained", Topic]]:
        """The retained events a new subscription gets (get_retained): of each topic it
        matches that the session may subscribe to and the publication was for; at most
        RETAINED_PER_SUBSCRIBE of them and RETAINED_BYTES_PER_SUBSCRIBE (the newest first
        left out), so one SUBSCRIBE cannot bury its own session."""
        if subscription.match == EXACT:
            candidates = [(subscription.topic, self._retained[subscription.topic])] \
                if subscription.topic in self._retained else []
        elif subscription.match == PREFIX_MATCH:
            candidates = [(uri, r) for uri, r in self._retained.items() if uri.startswith(subscription.topic)]
        else:
            pattern = tuple(subscription.topic.split("."))
            candidates = [(uri, r) for uri, r in self._retained.items() if wildcard_matches(pattern, uri.split("."))]
        found, size = [], 0
        role = role_of(connection)
        for uri, retained in candidates:
            if not (self._permissions.allows(role, "subscribe", uri) and retained.audience.includes(connection)):
                continue
            size += retained.size
            if len(found) >= RETAINED_PER_SUBSCRIBE or size > RETAINED_BYTES_PER_SUBSCRIBE:
                break
            found.append((retained, Topic(uri, "", None)))
        return found

    # -- PUBLISH -------------------------------------------------------------------------

    def publish(self, connection, request) -> Deferred:
        """Fires with the publication id once published; raises `WampError` when the session
        may not or the request is bad. `eform.*`: a broadcast through the hub (so legacy
        clients get it too); any other topic: an application's, as the table allows."""
        if is_reserved(request.topic):
            raise WampError(NOT_AUTHORIZED, f"{request.topic!r} is a topic of the WAMP meta API: only the router "
                                            f"publishes there")
        if not is_own(request.topic):
            return self._publish_application(connection, request)
        if not self._policy.may_publish(connection.session):
            raise WampError(NOT_AUTHORIZED, "this session may not publish")
        _refuse_unsupported(request)
        path, room = target_of(request.topic, self._hub.namespaces)
        if room is not None:
            try:
                wire.check_room(room)
            except wire.ClientMessageError as e:
                raise WampError(INVALID_ARGUMENT, e.message) from None
        event, data = publication_arguments(request.args, request.kwargs)
        publication = new_id()
        meta = {"publication": publication}
        if request.exclude_me is not False:
            meta["exclude"] = connection.id
        if room is None:
            d = self._publisher.broadcast(path, event, data, meta={META: meta})
        else:
            d = self._publisher.broadcast_to_room(path, room, event, data, meta={META: meta})
        d.addCallback(lambda _: publication)
        return d


    def _publish_application(self, connection, request) -> Deferred:
        entry = self._permissions.entry(role_of(connection), "publish", request.topic)
        if entry is None:
            raise WampError(NOT_AUTHORIZED, f"this session may not publish to {request.topic!r}")
        if request.payload is not None:
            raise WampError(INVALID_ARGUMENT, "the PUBLISH field 'payload' is not supported")
        session = connection.session
        publication = new_id()
        meta: dict[str, Any] = {"topic": request.topic, "publication": publication}
        if request.retain:
            meta["retain"] = True
        excluded = list(request.exclude or ())
        if request.exclude_me is not False:
            excluded.append(connection.wamp.id)
        for name, value in (("exclude", excluded), ("exclude_authid", request.exclude_authid),
                            ("exclude_authrole", request.exclude_authrole), ("eligible", request.eligible),
                            ("eligible_authid", request.eligible_authid),
                            ("eligible_authrole", request.eligible_authrole)):
            if value is not None and (value or name != "exclude"):
                if len(value) > MAX_AUDIENCE:
                    raise WampError(INVALID_ARGUMENT, f"{name}: at most {MAX_AUDIENCE} entries")
                meta[name] = list(value)
        if entry.disclose:
            meta["publisher"] = {"publisher": connection.wamp.id, "publisher_authid": session.user_id,
                                 "publisher_authrole": session.role}
        args, kwargs = list(request.args or ()), dict(request.kwargs or {})
        d = self._publisher.publish_topic(args, kwargs, {META: meta})
        if request.retain and self._retained_store is not None:
            try:
                encoded = base64.b64encode(cbor2.dumps([args, kwargs, meta])).decode("ascii")
            except Exception:
                pass  # not retained here either (see _retain)
            else:
                self._retained_store.save(request.topic, encoded)
        d.addCallback(lambda _: publication)
        return d


class Retained:
    """A retained publication, encoded once (CBOR: its memory is its size, whatever its
    shape), with what a later subscriber needs: publication id, publisher, audience."""

    __slots__ = ("publication", "encoded", "publisher", "audience", "size")

    def __init__(self, args, kwargs, meta: dict):
        self.publication = meta["publication"]
        self.publisher = meta.get("publisher")
        self.audience = Audience(meta)
        lists = {name: meta[name] for _, name in (*_LISTS["eligible"], *_LISTS["exclude"]) if name in meta}
        self.encoded = cbor2.dumps([args, kwargs, lists])
        self.size = len(self.encoded) + 256  # and its few objects

    @classmethod
    def of(cls, message: Message) -> "Retained":
        return cls(message.envelope["args"], message.envelope["kwargs"], message.meta[META])

    @property
    def args(self) -> list:
        return cbor2.loads(self.encoded)[0]

    @property
    def kwargs(self) -> dict:
        return cbor2.loads(self.encoded)[1]


class Audience:
    """Who among the subscribers an application's publication is for: its `eligible`
    lists (by session id, authid, authrole: when given, a recipient must be in each) and
    `exclude` lists (in none), as the publisher gave them."""

    __slots__ = ("eligible", "exclude")

    def __init__(self, meta: dict):
        self.eligible = [(kind, frozenset(meta[name])) for kind, name in _LISTS["eligible"] if name in meta]
        self.exclude = [(kind, frozenset(meta[name])) for kind, name in _LISTS["exclude"] if name in meta]

    def includes(self, connection) -> bool:
        if not self.eligible and not self.exclude:
            return True
        identity = {"session": connection.wamp.id, "authid": connection.session.user_id,
                    "authrole": connection.session.role}
        return (all(identity[kind] in values for kind, values in self.eligible)
                and not any(identity[kind] in values for kind, values in self.exclude))


_LISTS = {
    which: (("session", which), ("authid", f"{which}_authid"), ("authrole", f"{which}_authrole"))
    for which in ("eligible", "exclude")
}


def publication_of(message: Message) -> int:
    """The publication id of a message, one whatever the audience: the publisher's (a WAMP
    PUBLISH), else one derived from the event's `id` (so every process gives a structured
    event the same), else one drawn once and kept in `meta` (which a redacted copy shares)."""
    meta = message.meta.setdefault(META, {})
    publication = meta.get("publication")
    if publication is None:
        event_id = message.envelope.get("id")
        if isinstance(event_id, str):
            digest = hashlib.blake2b(event_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
            publication = int.from_bytes(digest, "big") % MAX_ID + 1
        else:
            publication = new_id()
        meta["publication"] = publication
    return publication


_UNSUPPORTED = (
    "exclude",
    "exclude_authid",
    "exclude_authrole",
    "eligible",
    "eligible_authid",
    "eligible_authrole",
    "retain",
    "payload",
)


def _refuse_unsupported(request) -> None:
    for name in _UNSUPPORTED:
        if getattr(request, name, None):
            raise WampError(INVALID_ARGUMENT, f"the PUBLISH option or field {name!r} is not supported")


def publication_arguments(args, kwargs) -> tuple[str, dict]:
    """The event name and data of a PUBLISH: args `[event, data]`, or kwargs `{"event",
    "data"}`; `data` is a JSON object and defaults to `{}`."""
    args = list(args or ())
    kwargs = dict(kwargs or {})
    if len(args) > 2 or (args and kwargs) or set(kwargs) - {"event", "data"}:
        raise WampError(INVALID_ARGUMENT, "publish args [event, data] or kwargs {event, data}")
    event = args[0] if args else kwargs.get("event")
    data = args[1] if len(args) > 1 else kwargs.get("data", {})
    try:
        check_broadcast(event, data)
    except BroadcastError as e:
        raise WampError(INVALID_ARGUMENT, str(e)) from None
    return event, data
