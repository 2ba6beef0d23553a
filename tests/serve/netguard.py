"""Run a module with outbound network forbidden: `python -m tests.serve.netguard <module> [args...]`.

An audit hook refuses (and records in $NETGUARD_LOG) every DNS lookup of a non-local name and every
connection to a non-loopback address, so a test can assert that a serving process never reached
outside the machine (Gradio analytics, update checks, model hubs, ...).
"""

import ipaddress
import os
import runpy
import socket
import sys

LOCAL_NAMES = {"localhost", "127.0.0.1", "::1", "0.0.0.0", "", None}


def _is_local(host) -> bool:
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    if host in LOCAL_NAMES:
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_unspecified


def install(log_path: str) -> None:
    def hook(event, args):
        if event == "socket.getaddrinfo":
            host = args[0]
        elif event == "socket.connect":
            sock, address = args
            if sock.family not in (socket.AF_INET, socket.AF_INET6):
                return
            host = address[0]
        else:
            return
        if not _is_local(host):
            with open(log_path, "a") as f:
                f.write(f"{event} {host!r}\n")
            raise OSError(f"netguard: outbound network to {host!r} is not allowed in this test")

    sys.addaudithook(hook)


if __name__ == "__main__":
    install(os.environ["NETGUARD_LOG"])
    module = sys.argv[1]
    sys.argv = [module, *sys.argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
