"""Checks gRPC statuses end to end with grpc-core (Python grpcio) as the client.

Usage: grpc_interop_client.py TARGET [--proxy-errors] [--tls CERT KEY CA HOST]

TARGET (host:port) leads to tests/python/grpc_interop_server.py, directly or
through sidecars. For each of the four call shapes the server is told to
fail without a reply (a trailers-only response), to fail after replies
(trailers after data), and to succeed with custom trailers; messages carry
non-ASCII text and literal percent signs, trailers carry text and binary
values, and grpc-status-details-bin carries a google.rpc.ErrorInfo. Every
code, message, trailer and detail must arrive as the server sent it, and
none may look like a proxy-made error (x-gridmesh-error).

With --proxy-errors, TARGET is a sidecar whose cluster has no endpoints: the
sidecar's own trailers-only UNAVAILABLE must reach grpcio intact.

With --tls, grpcio speaks mutual TLS to TARGET (a sidecar's STRICT port),
presenting CERT and KEY and verifying the sidecar against CA as HOST.

Every check runs even after one fails (tests/python/checks.py).
"""

import base64
import json
import sys

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from checks import check, finish
from grpc_interop_server import SERVICE, decode_text, encode_text

TIMEOUT = 10
BINARY = bytes([0, 1, 2, 0xFE, 0xFF])

class Outcome:
    """What a call delivered to the application."""

    def __init__(self, replies, code, details, trailers, rich):
        self.replies = replies
        self.code = code
        self.details = details
        self.trailers = trailers
        self.rich = rich

    def __repr__(self) -> str:
        return (
            f"Outcome(replies={self.replies}, code={self.code}, details={self.details!r}, "
            f"trailers={self.trailers!r})"
        )


def outcome(replies, call) -> Outcome:
    try:
        rich = rpc_status.from_call(call)
    except ValueError as error:
        # grpc-status-details-bin disagrees with grpc-status / grpc-message.
        rich = error
    return Outcome(replies, call.code(), call.details(), list(call.trailing_metadata() or ()), rich)


def call(channel: grpc.Channel, shape: str, instruction: dict) -> Outcome:
    request = encode_text(json.dumps(instruction))
    path = f"/{SERVICE}/{shape}"
    plain = dict(request_serializer=None, response_deserializer=None)
    if shape in ("Unary", "ClientStream"):
        method = (
            channel.unary_unary(path, **plain)
            if shape == "Unary"
            else channel.stream_unary(path, **plain)
        )
        argument = request if shape == "Unary" else iter([request])
        try:
            response, rpc = method.with_call(argument, timeout=TIMEOUT)
            return outcome([decode_text(response)], rpc)
        except grpc.RpcError as error:
            return outcome([], error)
    method = (
        channel.unary_stream(path, **plain)
        if shape == "ServerStream"
        else channel.stream_stream(path, **plain)
    )
    responses = method(request if shape == "ServerStream" else iter([request]), timeout=TIMEOUT)
    replies = []
    try:
        for response in responses:
            replies.append(decode_text(response))
    except grpc.RpcError:
        pass
    return outcome(replies, responses)


def expect(what: str, got: Outcome, instruction: dict, replies: int) -> None:
    code = instruction.get("code", 0)
    check(got.code.value[0] == code, f"{what}: code {got.code} (want {code}); {got}")
    if code != 0:
        check(
            got.details == instruction.get("message", ""),
            f"{what}: message {got.details!r} (want {instruction.get('message')!r})",
        )
    check(len(got.replies) == replies, f"{what}: {len(got.replies)} replies (want {replies})")
    keys = [key for key, _ in got.trailers]
    check("x-gridmesh-error" not in keys, f"{what}: looks like a proxy error: {got.trailers}")
    for key, value in instruction.get("trailers", []):
        want = base64.b64decode(value) if key.endswith("-bin") else value
        check((key, want) in got.trailers, f"{what}: trailer {key}={want!r} missing: {got.trailers}")
    info = instruction.get("error_info")
    if info is None:
        return
    if isinstance(got.rich, Exception) or got.rich is None:
        check(False, f"{what}: no usable grpc-status-details-bin: {got.rich!r}")
        return
    check(
        got.rich.code == code and got.rich.message == instruction["message"],
        f"{what}: details status {got.rich.code} {got.rich.message!r}",
    )
    infos = []
    for detail in got.rich.details:
        parsed = error_details_pb2.ErrorInfo()
        if detail.Unpack(parsed):
            infos.append(parsed)
    check(
        any(
            i.reason == info["reason"]
            and i.domain == info["domain"]
            and dict(i.metadata) == info["metadata"]
            for i in infos
        ),
        f"{what}: ErrorInfo {info} not in {infos}",
    )


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def upstream_statuses(channel: grpc.Channel) -> None:
    streaming = ("ServerStream", "Bidi")
    for shape in ("Unary", "ClientStream", "ServerStream", "Bidi"):
        failing = {
            "code": grpc.StatusCode.NOT_FOUND.value[0],
            "message": 'model "résumé ✓ 模型" not found: 100% sure, %41 stays',
            "trailers": [["x-block", "block-1"], ["x-trace-bin", b64(BINARY)]],
            "error_info": {
                "reason": "MODEL_NOT_FOUND",
                "domain": "gridmesh.test",
                "metadata": {"model": "résumé", "version": "2"},
            },
        }
        expect(f"{shape} trailers-only error", call(channel, shape, failing), failing, 0)

        bare = {"code": grpc.StatusCode.UNAVAILABLE.value[0], "message": ""}
        expect(f"{shape} error without message", call(channel, shape, bare), bare, 0)

        if shape in streaming:
            after = {
                "code": grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
                "message": "queue full\tat 100%; ünïcode",
                "replies": 3,
                "trailers": [["x-queue", "64"], ["x-cost-bin", b64(BINARY * 3)]],
                "error_info": {"reason": "QUEUE_FULL", "domain": "gridmesh.test", "metadata": {}},
            }
            expect(f"{shape} error after data", call(channel, shape, after), after, 3)

        ok = {
            "code": 0,
            "replies": 2 if shape in streaming else 1,
            "trailers": [["x-ok", "yes"], ["x-ok-bin", b64(BINARY)]],
        }
        expect(f"{shape} OK with trailers", call(channel, shape, ok), ok, ok["replies"])

    # Every code as a trailers-only unary error.
    for code in grpc.StatusCode:
        number = code.value[0]
        if number == 0:
            continue
        instruction = {"code": number, "message": f"code {number}"}
        expect(f"Unary code {number}", call(channel, "Unary", instruction), instruction, 0)


def proxy_errors(channel: grpc.Channel) -> None:
    for shape in ("Unary", "ClientStream", "ServerStream", "Bidi"):
        got = call(channel, shape, {"code": 0})
        check(
            got.code == grpc.StatusCode.UNAVAILABLE,
            f"{shape} without endpoints: code {got.code} (want UNAVAILABLE); {got}",
        )
        check(
            got.details == "no_healthy_upstream",
            f"{shape} without endpoints: message {got.details!r}",
        )
        check(
            ("x-gridmesh-error", "no_healthy_upstream") in got.trailers,
            f"{shape} without endpoints: no x-gridmesh-error: {got}",
        )


def channel_to(target: str, args: list[str]) -> grpc.Channel:
    """Plaintext, or with `--tls CERT KEY CA HOST` mutual TLS: grpcio's own
    ssl_channel_credentials with a client certificate, verifying the server
    against CA under the name HOST (a DNS SAN on the server's SVID)."""
    if "--tls" not in args:
        return grpc.insecure_channel(target)
    cert, key, ca, host = args[args.index("--tls") + 1 :][:4]
    with open(cert, "rb") as c, open(key, "rb") as k, open(ca, "rb") as a:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=a.read(), private_key=k.read(), certificate_chain=c.read()
        )
    return grpc.secure_channel(
        target, credentials, options=[("grpc.ssl_target_name_override", host)]
    )


def main() -> None:
    target, args = sys.argv[1], sys.argv[2:]
    with channel_to(target, args) as channel:
        if "--proxy-errors" in args:
            proxy_errors(channel)
        else:
            upstream_statuses(channel)
    finish()


if __name__ == "__main__":
    main()
