"""gRPC load for tests/grpc.rs: Python's grpcio calling examples/greeter.

Usage: grpc_client.py HOST:PORT THREADS

THREADS threads call on channels of their own, which grpcio backs with one
shared TCP connection (its global subchannel pool), as a service with many
stubs does. Each thread loops: SayHello (unary) three times, then one
Greetings server stream of 5 replies 20 ms apart, read to its end. The
messages are protobuf, encoded here by hand so no generated code is needed.

Prints "ready" once every thread has had a call succeed, then runs until
stdin closes (or 600 s pass) and prints one JSON line: calls that
succeeded and failed, by kind, and the first failures' codes and details.
"""

import json
import sys
import threading
import time

import grpc

TARGET, THREADS = sys.argv[1], int(sys.argv[2])
NAME = b"grpcio"
HELLO = b"\x0a" + bytes([len(NAME)]) + NAME
STREAM_REPLIES = 5
# name, count = 5, every_ms = 20
GREETINGS = HELLO + b"\x10" + bytes([STREAM_REPLIES]) + b"\x18\x14"
EXPECTED = b"hello, " + NAME

ident = lambda b: b  # noqa: E731
stop = threading.Event()
lock = threading.Lock()
counts = {"unary_ok": 0, "stream_ok": 0, "failed": 0, "failures": []}
started = threading.Barrier(THREADS + 1)


def failed(kind, err):
    with lock:
        counts["failed"] += 1
        if len(counts["failures"]) < 20:
            if isinstance(err, grpc.RpcError):
                counts["failures"].append([kind, err.code().name, err.details()])
            else:
                counts["failures"].append([kind, "WRONG", repr(err)])


def worker():
    channel = grpc.insecure_channel(TARGET)
    hello = channel.unary_unary(
        "/greeter.Greeter/SayHello", request_serializer=ident, response_deserializer=ident
    )
    greetings = channel.unary_stream(
        "/greeter.Greeter/Greetings", request_serializer=ident, response_deserializer=ident
    )
    first = True
    while not stop.is_set():
        for _ in range(3):
            try:
                reply = hello(HELLO, timeout=30)
                if EXPECTED not in reply:
                    raise ValueError(reply)
                with lock:
                    counts["unary_ok"] += 1
            except Exception as err:  # noqa: BLE001
                failed("unary", err)
            if first:
                first = False
                started.wait()
        try:
            replies = list(greetings(GREETINGS, timeout=30))
            if len(replies) != STREAM_REPLIES or any(EXPECTED not in r for r in replies):
                raise ValueError(replies)
            with lock:
                counts["stream_ok"] += 1
        except Exception as err:  # noqa: BLE001
            failed("stream", err)


threads = [threading.Thread(target=worker, daemon=True) for _ in range(THREADS)]
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
