"""gRPC load for tests/grpc.rs: Python's grpcio calling examples/greeter.

Usage: grpc_client.py HOST:PORT UNARY STREAMS BIDI

Every thread calls on a channel of its own, and grpcio backs them all with
one shared TCP connection (its global subchannel pool), as a service with
many stubs does:
- UNARY threads loop on SayHello;
- STREAMS threads each read one long Greetings server stream, numbered;
  when a deploy ends it (UNAVAILABLE), they call again from the next number,
  and check that every number comes once and in order;
- BIDI threads each hold a Chat stream, send a name, and check that the
  echo is theirs and numbered in order; when a deploy ends the stream, they
  open another.

A stream ended with UNAVAILABLE and one of the messages the greeter or the
kit gives when it ends streams on a drain is resumed, and counted as such.
Every other error, and every reply that is not the one expected, is a
failure, counted by kind, status and details.

Prints "ready" once every thread has had a reply, then runs until stdin
closes (or 600 s pass) and prints one JSON line of counts.
The messages are protobuf, encoded here by hand so no generated code is
needed.
"""

import json
import queue
import sys
import threading

import grpc

TARGET = sys.argv[1]
UNARY, STREAMS, BIDI = (int(n) for n in sys.argv[2:5])

# The details of the UNAVAILABLE a drain ends streams with: the greeter's
# own, as its streams watch the drain, and the kit's cut-off's.
DRAIN_DETAILS = (
    "the instance is draining; call again",
    "the server is shutting down; try again",
)

ident = lambda b: b  # noqa: E731
stop = threading.Event()
lock = threading.Lock()
counts = {
    "unary_ok": 0,
    "stream_messages": 0,
    "streams_resumed": 0,
    "bidi_echoes": 0,
    "bidi_resumed": 0,
    "failed": 0,
    "failures": {},
}
started = threading.Barrier(UNARY + STREAMS + BIDI + 1)


def varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def string(field, text):
    data = text.encode()
    return bytes([field << 3 | 2]) + varint(len(data)) + data


def number(field, n):
    return bytes([field << 3]) + varint(n)


def reply_fields(data):
    """HelloReply: (message, seq)."""
    fields, i = {}, 0
    while i < len(data):
        key = data[i]
        i += 1
        value, shift = 0, 0
        while True:
            byte = data[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        if key & 7 == 2:
            fields[key >> 3] = data[i : i + value].decode()
            i += value
        else:
            fields[key >> 3] = value
    return fields.get(1, ""), fields.get(3, 0)


def count(key, n=1):
    with lock:
        counts[key] += n


def failed(kind, err):
    if isinstance(err, grpc.RpcError):
        what = f"{kind} {err.code().name} {err.details()}"
    else:
        what = f"{kind} WRONG {err!r}"
    with lock:
        counts["failed"] += 1
        failures = counts["failures"]
        if what in failures or len(failures) < 30:
            failures[what] = failures.get(what, 0) + 1


def drained(err):
    """Whether a stream was ended by a drain, for its client to resume."""
    return (
        isinstance(err, grpc.RpcError)
        and err.code() == grpc.StatusCode.UNAVAILABLE
        and err.details() in DRAIN_DETAILS
    )


class Once:
    """Waits at the start barrier the first time only."""

    def __init__(self):
        self.done = False

    def __call__(self):
        if not self.done:
            self.done = True
            started.wait()


def unary_worker(n):
    channel = grpc.insecure_channel(TARGET)
    hello = channel.unary_unary(
        "/greeter.Greeter/SayHello", request_serializer=ident, response_deserializer=ident
    )
    name = f"unary-{n}"
    ready = Once()
    while not stop.is_set():
        try:
            message, _ = reply_fields(hello(string(1, name), timeout=30))
            if message != f"hello, {name}":
                raise ValueError(message)
            count("unary_ok")
        except Exception as err:  # noqa: BLE001
            failed("unary", err)
        ready()


def stream_worker(n):
    channel = grpc.insecure_channel(TARGET)
    greetings = channel.unary_stream(
        "/greeter.Greeter/Greetings", request_serializer=ident, response_deserializer=ident
    )
    name = f"stream-{n}"
    ready = Once()
    expected = 0
    while not stop.is_set():
        # Long enough to span several deploys; 20 ms apart.
        request = string(1, name) + number(2, 10000) + number(3, 20) + number(4, expected)
        call = greetings(request, timeout=300)
        try:
            for reply in call:
                message, seq = reply_fields(reply)
                if message != f"hello, {name}" or seq != expected:
                    raise ValueError(f"got {message!r} #{seq}, expected #{expected}")
                expected += 1
                count("stream_messages")
                ready()
                if stop.is_set():
                    call.cancel()
                    return
            raise ValueError(f"the stream ended at #{expected} without a status")
        except Exception as err:  # noqa: BLE001
            if stop.is_set() and isinstance(err, grpc.RpcError) and err.code() == grpc.StatusCode.CANCELLED:
                return
            if drained(err):
                count("streams_resumed")
            else:
                failed("stream", err)
                ready()


def bidi_worker(n):
    channel = grpc.insecure_channel(TARGET)
    chat = channel.stream_stream(
        "/greeter.Greeter/Chat", request_serializer=ident, response_deserializer=ident
    )
    ready = Once()
    sent = 0
    while not stop.is_set():
        requests = queue.Queue()

        def outgoing():
            while (item := requests.get()) is not None:
                yield item

        call = chat(outgoing(), timeout=300)
        seq = 0
        try:
            while not stop.is_set():
                name = f"bidi-{n}-{sent}"
                requests.put(string(1, name))
                sent += 1
                message, got = reply_fields(next(call))
                if message != f"hello, {name}" or got != seq:
                    raise ValueError(f"got {message!r} #{got}, expected {name!r} #{seq}")
                seq += 1
                count("bidi_echoes")
                ready()
            requests.put(None)
            for extra in call:
                raise ValueError(f"an echo nobody asked for: {extra!r}")
            return
        except Exception as err:  # noqa: BLE001
            requests.put(None)
            if drained(err):
                count("bidi_resumed")
            else:
                failed("bidi", err)
                ready()


threads = (
    [threading.Thread(target=unary_worker, args=(n,), daemon=True) for n in range(UNARY)]
    + [threading.Thread(target=stream_worker, args=(n,), daemon=True) for n in range(STREAMS)]
    + [threading.Thread(target=bidi_worker, args=(n,), daemon=True) for n in range(BIDI)]
)
for t in threads:
    t.start()
started.wait(timeout=60)
print("ready", flush=True)


def watch_stdin():
    sys.stdin.read()
    stop.set()


threading.Thread(target=watch_stdin, daemon=True).start()
stop.wait(timeout=600)
stop.set()
for t in threads:
    t.join(timeout=60)
with lock:
    print(json.dumps(counts), flush=True)
