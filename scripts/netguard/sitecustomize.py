"""Logs every network connection attempt of the process it is loaded into (tests only).

The harness puts this folder on PYTHONPATH and sets ACE_NETGUARD_LOG; Python imports `sitecustomize` at start-up,
so ComfyUI runs as `python main.py ...` unchanged while its socket calls are recorded through audit hooks.
"""
import json
import os
import sys

_LOG = os.environ.get("ACE_NETGUARD_LOG")
_EVENTS = {"socket.connect", "socket.sendto", "socket.getaddrinfo"}


def _record(event, args):
    if event not in _EVENTS:
        return
    if event == "socket.getaddrinfo":
        address = [args[0], args[1]]
    else:
        sock, address = args[0], args[1]
        if getattr(sock, "family", None) == 1:  # AF_UNIX: local by definition
            return
    try:
        with open(_LOG, "a") as f:
            f.write(json.dumps({"event": event, "address": list(address) if isinstance(address, tuple) else address},
                               default=str) + "\n")
    except Exception:
        pass


if _LOG:
    sys.addaudithook(_record)
