"""etcd_network_client_grpc_{received,sent}_bytes_total count what etcd counts: the protobuf
bytes of each request and response message (etcd's gRPC codec adds len(proto.Marshal(m)) per
message), not the HTTP/2 frames or the 5-byte gRPC message prefix around them."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import grpc
from aetcd import rpc

from tests.harness.stores import RunningStore
from tests.http.conftest import request

RECEIVED = "etcd_network_client_grpc_received_bytes_total"
SENT = "etcd_network_client_grpc_sent_bytes_total"


def _counts(url: str) -> tuple[float, float]:
    values = {}
    for line in request(url, "GET", "/metrics").raw.decode().splitlines():
        name, _, value = line.partition(" ")
        if name in (RECEIVED, SENT):
            values[name] = float(value)
    return values[RECEIVED], values[SENT]


def test_grpc_bytes_are_message_bytes(fresh_store: RunningStore) -> None:
    store = fresh_store
    received_before, sent_before = _counts(store.url)
    sent_by_client = 0
    received_by_client = 0
    with grpc.insecure_channel(store.url.split("//", 1)[1]) as channel:
        kv = rpc.KVStub(channel)
        unary = [
            (kv.Put, rpc.PutRequest(key=b"/bytes/a", value=b"x" * 300)),
            (kv.Put, rpc.PutRequest(key=b"/bytes/b", value=b"y" * 40, prev_kv=True)),
            (kv.Range, rpc.RangeRequest(key=b"/bytes/", range_end=b"/bytes0")),
            (kv.Range, rpc.RangeRequest(key=b"/bytes/none")),
            (kv.DeleteRange, rpc.DeleteRangeRequest(key=b"/bytes/b", prev_kv=True)),
        ]
        for call, message in unary:
            response = call(message, timeout=10)
            sent_by_client += message.ByteSize()
            received_by_client += response.ByteSize()
        # A stream: each watch request and each watch response is one message.
        outgoing: queue.Queue[rpc.WatchRequest | None] = queue.Queue()

        def requests() -> Iterator[rpc.WatchRequest]:
            while (item := outgoing.get(timeout=10)) is not None:
                yield item

        create = rpc.WatchRequest(
            create_request=rpc.WatchCreateRequest(key=b"/bytes/a", prev_kv=True)
        )
        outgoing.put(create)
        sent_by_client += create.ByteSize()
        watch = rpc.WatchStub(channel).Watch(requests(), timeout=20)
        responses = iter(watch)
        created = next(responses)
        assert created.created
        received_by_client += created.ByteSize()
        put = rpc.PutRequest(key=b"/bytes/a", value=b"z" * 1000)
        answers: list[rpc.PutResponse] = []
        writer = threading.Thread(target=lambda: answers.append(kv.Put(put, timeout=10)))
        writer.start()
        while True:
            event = next(responses)
            received_by_client += event.ByteSize()
            if event.events:
                break
        assert event.events[0].kv.value == b"z" * 1000
        writer.join(10)
        sent_by_client += put.ByteSize()
        received_by_client += answers[0].ByteSize()
        outgoing.put(None)
        watch.cancel()
    received_after, sent_after = _counts(store.url)
    assert received_after - received_before == sent_by_client
    assert sent_after - sent_before == received_by_client
