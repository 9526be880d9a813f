"""Registers `twistd eformws`: a ServiceMaker naming eformws.tap."""
from twisted.application.service import ServiceMaker

eformws = ServiceMaker("eformws", "eformws.tap", "eform real-time gateway (WebSocket, HTTP API)", "eformws")
