"""A gRPC server on grpc-core (Python grpcio) that answers as it is told.

Usage: grpc_interop_server.py

Serves gridmesh.interop.Interop (tests/python/interop.proto) on a free
loopback port and prints `listening on 127.0.0.1:PORT`. Every call's first
request is an Instruction whose JSON says what to answer:

  {"code": 5,                      # final gRPC status code (0 = OK)
   "message": "...",               # grpc-message
   "replies": 2,                   # replies sent before the status (streaming
                                   #  responses; unary answers one when OK)
   "trailers": [["x-k", "v"], ["x-k-bin", "<base64>"]],
   "error_info": {"reason": ..., "domain": ..., "metadata": {...}}}
                                   # sent as grpc-status-details-bin

A failing call that sent no reply goes out the way grpc-core sends it: one
HEADERS frame with END_STREAM carrying the status (trailers-only). That is
the shape gRPC proxies get wrong, which is why this server exists: the tests'
own tonic servers are not enough to catch it.
"""

import base64
import json
import signal
import sys
import threading
from concurrent import futures

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

SERVICE = "gridmesh.interop.Interop"


def encode_text(text: str) -> bytes:
    """A message whose only field (1, a string) holds `text`."""
    data = text.encode()
    length = len(data)
    prefix = bytearray()
    while True:
        byte = length & 0x7F
        length >>= 7
        if length:
            prefix.append(byte | 0x80)
        else:
            prefix.append(byte)
            break
    return b"\x0a" + bytes(prefix) + data


def decode_text(message: bytes) -> str:
    """Field 1 (a string) of a one-field message; empty when absent."""
    if not message:
        return ""
    if message[0] != 0x0A:
        raise ValueError(f"unexpected field tag {message[0]:#x}")
    length, shift, index = 0, 0, 1
    while True:
        byte = message[index]
        index += 1
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return message[index : index + length].decode()


class Status(grpc.Status):
    def __init__(self, code: grpc.StatusCode, details: str, trailing_metadata):
        self.code = code
        self.details = details
        self.trailing_metadata = trailing_metadata


def status_code(number: int) -> grpc.StatusCode:
    return next(code for code in grpc.StatusCode if code.value[0] == number)


def trailers_of(instruction: dict) -> list:
    trailers = []
    for key, value in instruction.get("trailers", []):
        trailers.append((key, base64.b64decode(value) if key.endswith("-bin") else value))
    return trailers


def finish(instruction: dict, context: grpc.ServicerContext) -> None:
    """Ends the call with the instruction's status and trailers."""
    trailers = trailers_of(instruction)
    code = instruction.get("code", 0)
    message = instruction.get("message", "")
    if code == 0:
        context.set_trailing_metadata(trailers)
        return
    info = instruction.get("error_info")
    if info is not None:
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.ErrorInfo(
                reason=info["reason"], domain=info["domain"], metadata=info.get("metadata", {})
            )
        )
        rich = status_pb2.Status(code=code, message=message, details=[detail])
        trailers.append(("grpc-status-details-bin", rich.SerializeToString()))
    context.abort_with_status(Status(status_code(code), message, tuple(trailers)))


def replies(instruction: dict):
    for n in range(instruction.get("replies", 0)):
        yield encode_text(f"reply {n}")


def unary(request: bytes, context):
    instruction = json.loads(decode_text(request))
    finish(instruction, context)
    return encode_text("reply 0")


def client_stream(requests, context):
    instructions = [json.loads(decode_text(r)) for r in requests]
    finish(instructions[0], context)
    return encode_text("reply 0")


def server_stream(request: bytes, context):
    instruction = json.loads(decode_text(request))
    yield from replies(instruction)
    finish(instruction, context)


def bidi(requests, context):
    instruction = json.loads(decode_text(next(requests)))
    yield from replies(instruction)
    finish(instruction, context)


def main() -> None:
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"listening on 127.0.0.1:{port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=1).wait()
    sys.exit(0)


if __name__ == "__main__":
    main()
