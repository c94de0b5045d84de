"""A free loopback TCP port for a test to bind, outside the kernel's ephemeral range.

Asking the kernel for port 0 and handing the number on leaves a window in which any outgoing
connection (another test's, another xdist worker's) may be given the same port from the
ephemeral range: CI once failed with "Address already in use" that way. A port below that range
is never handed out by the kernel, so only another test picking the same number by chance could
take it; the number is drawn from the OS's randomness (Hypothesis reseeds ``random``, which could
make two workers draw alike), and checked free by binding it.
"""

import random
import socket

_rng = random.SystemRandom()


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_tcp_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago and that the kernel does not hand out."""
    low, high = 10000, _ephemeral_low()
    for _ in range(200):
        port = _rng.randrange(low, high) if high > low + 100 else 0
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError(f"no free TCP port on 127.0.0.1 in {low}..{high - 1} after 200 tries")
