"""The HTTP site on the one port: the resource tree, request bodies bounded in memory, and
an access log that never writes a query string (it may hold a session id)."""

from __future__ import annotations

from twisted.web.iweb import IAccessLogFormatter
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from zope.interface import provider


@provider(IAccessLogFormatter)
def access_line(timestamp, request) -> str:
    """Client, method, path without its query, status and size; no headers, no query."""
    path = request.path.decode("latin-1", "replace")
    method = request.method.decode("latin-1", "replace")
    return f'{request.getClientAddress().host} "{method} {path}" {request.code} {request.sentLength}'


class BoundedRequest(Request):
    """Keeps at most `max_body_bytes` of a body; past that it sets `body_too_large` and
    drops the rest, so a large body costs no memory and is answered 413."""

    max_body_bytes = 65536

    def gotLength(self, length):
        self.body_too_large = length is not None and length > self.max_body_bytes
        self._body_received = 0
        super().gotLength(None if self.body_too_large else length)

    def handleContentChunk(self, data):
        self._body_received += len(data)
        if self._body_received > self.max_body_bytes:
            self.body_too_large = True
        if not self.body_too_large:
            super().handleContentChunk(data)


class Root(Resource):
    """`/ws/<name>` to the namespace registry; `/wamp` to the WAMP router; other mounted
    resources by their first path segment (`/metrics`, the console); every other path to
    the HTTP API, which routes on the whole path."""

    def __init__(self, api_resource, namespaces_resource, wamp_resource=None, mounted=None):
        super().__init__()
        self._api = api_resource
        self._namespaces = namespaces_resource
        self._wamp = wamp_resource
        self._mounted = dict(mounted or {})

    def getChildWithDefault(self, name, request):
        if name == b"ws":
            return self._namespaces
        if name == b"wamp" and self._wamp is not None and not request.postpath:
            return self._wamp
        mounted = self._mounted.get(name)
        if mounted is not None:
            return mounted
        request.postpath.insert(0, request.prepath.pop())
        return self._api

    def render(self, request):
        return self._api.render(request)


def build_site(api_resource, namespaces_resource, max_body_bytes: int, wamp_resource=None, mounted=None) -> Site:
    """`mounted`: {b"segment": resource} served beside the API (`/metrics`, the console)."""
    class SiteRequest(BoundedRequest):
        pass

    SiteRequest.max_body_bytes = max_body_bytes
    site = Site(
        Root(api_resource, namespaces_resource, wamp_resource, mounted),
        logFormatter=access_line,
        parsePOSTFormSubmission=False,  # the API reads JSON bodies: no form parsing per POST
    )
    site.requestFactory = SiteRequest
    site.displayTracebacks = False
    return site
