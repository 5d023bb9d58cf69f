"""A fix to kafka-python's connect, applied once when the first bus is made (not at import)."""

from __future__ import annotations


def close_sockets_of_failed_connects() -> None:
    """Work around kafka-python 3.0.12: ``KafkaNetSocket.sock_connect`` (kafka/net/inet.py)
    raises on a refused or timed-out connect without closing the socket it made, so every
    reconnect attempt to a broker that is down leaves a socket for the garbage collector
    (and a ``ResourceWarning``, an error under the test suite's ``-W error``). Wrapped once,
    when the first :class:`KafkaBus` is made (nothing happens at import)."""
    from kafka.net.inet import KafkaNetSocket

    original = KafkaNetSocket.sock_connect
    if getattr(original, "_gpuledger_closes", False):
        return

    async def sock_connect(self, net, sock, sockaddr, timeout_at=None):  # type: ignore[no-untyped-def]
        try:
            return await original(self, net, sock, sockaddr, timeout_at=timeout_at)
        except BaseException:
            sock.close()
            raise

    sock_connect._gpuledger_closes = True  # type: ignore[attr-defined]
    KafkaNetSocket.sock_connect = sock_connect  # type: ignore[method-assign]
