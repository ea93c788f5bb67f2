"""A block of the existing AI network, as its SDK behaves on the wire.

Written from the wire facts in issue 13 (not from that network's code):
- it serves gRPC `InferenceProxy.infer(InferenceMessage{bytes rpc_data = 1})
  returns (InferenceRespose{bool message = 1})`, no package, and answers
  `message=true` once the packet is queued, before it is processed;
- `rpc_data` is a serialized AIOSPacket; a worker takes packets off the
  queue, replaces `data` with its output and passes every other field on
  unchanged;
- it sends the packet to each entry of `graph[<its block id>].outputs` of
  the JSON in `output_ptr` (or of `graph["final"]` when that list is
  empty) with `InferenceProxy.infer` to `host` as given, metadata
  `x-service-name: <block_id>`, and no deadline;
- it keeps one channel per `host`, together with the `x-service-name` of
  the first packet sent on it.

Its work: `data` is JSON {"value": n, "trail": [...]}; the block adds
`--add` to value and appends its block id to trail. `--mode drop` queues
and acks packets but never sends them on (a packet lost inside a block);
`--mode twice` sends every output twice. Each packet taken off the queue
is logged to `--log` as "<session_id> <seq_no>".

Usage: python inference_proxy_block.py --block-id ID --add N --log FILE
Prints "listening <port>" once serving on 127.0.0.1.
"""

import argparse
import json
import queue
import sys
import threading
from concurrent import futures

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

F = descriptor_pb2.FieldDescriptorProto


def _messages():
    """The network's messages, declared as its .proto declares them."""
    proto = descriptor_pb2.FileDescriptorProto(
        name="inference_proxy_block.proto", syntax="proto3"
    )

    def message(name, *fields):
        m = proto.message_type.add(name=name)
        for number, field, kind, repeated, type_name in fields:
            f = m.field.add(
                name=field,
                number=number,
                type=kind,
                label=F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL,
            )
            if type_name:
                f.type_name = type_name

    message("InferenceMessage", (1, "rpc_data", F.TYPE_BYTES, False, ""))
    message("InferenceRespose", (1, "message", F.TYPE_BOOL, False, ""))
    message(
        "FileInfo",
        (1, "metadata", F.TYPE_STRING, False, ""),
        (2, "file_data", F.TYPE_BYTES, False, ""),
    )
    message(
        "AIOSPacket",
        (1, "session_id", F.TYPE_STRING, False, ""),
        (2, "seq_no", F.TYPE_UINT64, False, ""),
        (3, "frame_ptr", F.TYPE_BYTES, False, ""),
        (4, "data", F.TYPE_STRING, False, ""),
        (5, "ts", F.TYPE_DOUBLE, False, ""),
        (6, "output_ptr", F.TYPE_STRING, False, ""),
        (7, "files", F.TYPE_MESSAGE, True, ".FileInfo"),
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(name))
        for name in ("InferenceMessage", "InferenceRespose", "AIOSPacket")
    }


MESSAGES = _messages()
InferenceMessage = MESSAGES["InferenceMessage"]
InferenceRespose = MESSAGES["InferenceRespose"]
AIOSPacket = MESSAGES["AIOSPacket"]


class Block:
    def __init__(self, block_id, add, mode, log):
        self.block_id = block_id
        self.add = add
        self.mode = mode
        self.log = log
        self.queue = queue.Queue()
        # host -> (call, x-service-name of the first packet sent on it)
        self.channels = {}

    def infer(self, request, _context):
        self.queue.put(request.rpc_data)
        return InferenceRespose(message=True)

    def work(self):
        while True:
            packet = AIOSPacket.FromString(self.queue.get())
            with open(self.log, "a") as log:
                log.write(f"{packet.session_id} {packet.seq_no}\n")
            if self.mode == "drop":
                continue
            data = json.loads(packet.data)
            data["value"] += self.add
            data["trail"].append(self.block_id)
            packet.data = json.dumps(data)
            graph = json.loads(packet.output_ptr)["graph"]
            outputs = graph[self.block_id]["outputs"] or graph["final"]["outputs"]
            for output in outputs:
                for _ in range(2 if self.mode == "twice" else 1):
                    self.send(output, packet)

    def send(self, output, packet):
        host = output["host"]
        if host not in self.channels:
            channel = grpc.insecure_channel(host)
            call = channel.unary_unary(
                "/InferenceProxy/infer",
                request_serializer=InferenceMessage.SerializeToString,
                response_deserializer=InferenceRespose.FromString,
            )
            self.channels[host] = (call, output["block_id"])
        call, service = self.channels[host]
        try:
            message = InferenceMessage(rpc_data=packet.SerializeToString())
            call(message, metadata=[("x-service-name", service)])
        except grpc.RpcError as e:
            print(f"{self.block_id}: sending to {host} failed: {e}", file=sys.stderr, flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--block-id", required=True)
    parser.add_argument("--add", type=int, default=0)
    parser.add_argument("--mode", choices=["forward", "drop", "twice"], default="forward")
    parser.add_argument("--log", required=True)
    args = parser.parse_args()
    block = Block(args.block_id, args.add, args.mode, args.log)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.method_handlers_generic_handler(
        "InferenceProxy",
        {
            "infer": grpc.unary_unary_rpc_method_handler(
                block.infer,
                request_deserializer=InferenceMessage.FromString,
                response_serializer=InferenceRespose.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    threading.Thread(target=block.work, daemon=True).start()
    print(f"listening {port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
