"""`twistd -n -y with-your-service.tac`: the gateway and a service of your own in one process.

The gateway is the same `EformService` that `twistd eformws` runs (its configuration from
GATEWAY_CONFIG, else the embedded defaults); your service is any Twisted service. Here it
emits a `system_status` event every 30 seconds through `eformws.emitter`, which reaches the
gateway running in this process."""

import os

from twisted.application.internet import TimerService
from twisted.application.service import Application
from twisted.logger import Logger

from eformws import emitter
from eformws.runtime.config import load_config
from eformws.runtime.service import EformService

log = Logger(namespace="heartbeat")


def heartbeat():
    d = emitter.emit_system_status("gateway", "online", 100, message="heartbeat from my service")
    d.addCallback(lambda stored: log.info("heartbeat stored as seq {seq}", seq=stored["seq"]))
    d.addErrback(lambda failure: log.warn("heartbeat not stored: {error}", error=failure.getErrorMessage()))


application = Application("eformws")
EformService(load_config(os.environ.get("GATEWAY_CONFIG"))).setServiceParent(application)
TimerService(float(os.environ.get("HEARTBEAT_SECONDS", "30")), heartbeat).setServiceParent(application)
