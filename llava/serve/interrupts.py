"""Ctrl-C that always reaches the main thread of a terminal program.

The kernel hands a process-directed SIGINT to any thread that does not block it. When that is not the
main thread (a library's helper thread: tqdm's monitor, the batching engine, OpenMP workers), Python
only notes the signal, and a main thread waiting in readline's select() for the next key never hears
of it: Ctrl-C at the prompt is ignored until Enter is pressed. `deliver_sigint_to_main_thread()`
installs a wakeup file descriptor (the C handler writes to it whichever thread it runs on) and a
forwarder thread, itself blocking SIGINT: when the main thread has not handled a Ctrl-C shortly after
it came, the forwarder sends it to the main thread with pthread_kill. (A signal the main thread took
itself is not sent again: a second SIGINT while the first KeyboardInterrupt unwinds through readline
ends in a SystemError.)"""

from __future__ import annotations

import os
import signal
import threading
import time

GRACE = 0.2  # seconds the main thread has to handle a Ctrl-C itself before it is forwarded
_installed = False


def deliver_sigint_to_main_thread() -> bool:
    """Install the forwarding (from the main thread); False where the platform has no pthread_kill."""
    global _installed
    if _installed:
        return True
    if not hasattr(signal, "pthread_kill") or threading.current_thread() is not threading.main_thread():
        return False
    _installed = True
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    main_id = threading.main_thread().ident
    handled = [float("-inf")]  # when the main thread last handled a Ctrl-C

    def on_sigint(signum, frame):
        handled[0] = time.monotonic()
        raise KeyboardInterrupt

    def forward() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        while data := os.read(read_fd, 64):
            if signal.SIGINT not in data:
                continue
            came = time.monotonic()
            time.sleep(GRACE)
            if handled[0] < came - GRACE:  # not handled around its arrival: the main thread still waits
                signal.pthread_kill(main_id, signal.SIGINT)

    signal.signal(signal.SIGINT, on_sigint)
    threading.Thread(target=forward, name="sigint-to-main", daemon=True).start()
    return True
