"""Running requests on the caller's loop: a request in, a serialized reply out.

Everything here runs on the loop that called `connect()`. A request's
handler is the SDK's replay engine (`connect.sdk.execution.execute`); its
outcome becomes one SDKResponse that echoes the request's identity. An
output over `limits.MAX_STEP_OUTPUT_BYTES` fails the step rather than the
connection (a frame that large would be refused), and a handler that raises
(the engine never does) becomes an error reply.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Mapping

import msgspec

from connect.sdk.client import Client
from connect.sdk.execution import SDK_VERSION, Invocation, execute
from connect.sdk.function import Function
from connect.sdk.version import REQUEST_VERSION
from protocol import connect_pb2 as pb
from protocol import limits
from protocol.payloads import Opcode

log = logging.getLogger("connect.worker")

#: Queue (request id, serialized SDKResponse, the checkpoint's answer or None
#: for a reply) for the machinery; False if the machinery has ended.
HandBack = Callable[[str, bytes, "asyncio.Future[bool] | None"], bool]


class RequestRunner:
    """Runs handed-over requests and hands their replies and checkpoints back."""

    def __init__(
        self,
        apps: Mapping[str, tuple[Client, Mapping[str, Function]]],
        hand_back: HandBack,
        closing: Callable[[], bool],
    ) -> None:
        self._apps = apps
        self._hand_back = hand_back
        self._closing = closing

    async def run(self, req: pb.GatewayExecutorRequestData) -> None:
        """Run one request and hand its reply back to the machinery (dropped
        if the machinery has ended: the drain deadline passed)."""
        try:
            raw = await self.execute(req)
        except BaseException as exc:  # the engine never raises; be safe anyway
            log.exception("request %s crashed", req.request_id)
            self._hand_back(req.request_id, crash_reply(req, exc), None)
            if not isinstance(exc, Exception):
                raise  # cancellation, KeyboardInterrupt, SystemExit: reported, then honoured
            return
        self._hand_back(req.request_id, raw, None)

    async def execute(self, req: pb.GatewayExecutorRequestData) -> bytes:
        client, fns = self._apps[req.app_name]
        outcome = await execute(
            client,
            fns,
            Invocation(
                request_payload=req.request_payload,
                function_slug=req.function_slug,
                step_id=req.step_id if req.HasField("step_id") else "step",
                request_id=req.request_id,
                job_id=req.job_id,
                checkpoint=functools.partial(self.checkpoint, req),
            ),
        )
        status, body, no_retry = outcome.status, outcome.body, outcome.no_retry
        if len(body) > limits.MAX_STEP_OUTPUT_BYTES:
            log.error("request %s: output of %d bytes is over the limit", req.request_id, len(body))
            status, no_retry = pb.ERROR, True
            body = msgspec.json.encode(
                {
                    "code": "output_too_large",
                    "name": "OutputTooLargeError",
                    "message": f"step output is {len(body)} bytes; the limit is {limits.MAX_STEP_OUTPUT_BYTES} bytes",
                }
            )
        resp = response(req, status, body, no_retry=no_retry, request_version=outcome.request_version)
        if outcome.retry_after is not None:
            resp.retry_after = outcome.retry_after
        return resp.SerializeToString()

    def checkpoint(self, req: pb.GatewayExecutorRequestData, op: Opcode) -> asyncio.Future[bool]:
        """Send one finished step as WORKER_CHECKPOINT; the future answers
        True once the platform stored it (the handler then goes on to its
        next step). Queued with the replies, so a reply handed back next
        leaves behind it, in the same write."""
        answer: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        body = msgspec.json.encode([op])
        if self._closing() or len(body) > limits.MAX_STEP_OUTPUT_BYTES:
            # Shutting down: end the request with this step, so the run's next
            # steps go to another worker instead of holding up the drain. Too
            # large: the request ends with it, and `execute` fails the step.
            answer.set_result(False)
            return answer
        raw = response(req, pb.NOT_COMPLETED, body).SerializeToString()
        if not self._hand_back(req.request_id, raw, answer):
            answer.set_result(False)  # the machinery ended
        return answer


def response(
    req: pb.GatewayExecutorRequestData,
    status: int,
    body: bytes,
    *,
    no_retry: bool = False,
    request_version: int = REQUEST_VERSION,
) -> pb.SDKResponse:
    """An answer to `req` (a reply or a checkpoint), echoing its identity."""
    return pb.SDKResponse(
        request_id=req.request_id,
        account_id=req.account_id,
        env_id=req.env_id,
        app_id=req.app_id,
        status=status,  # type: ignore[arg-type]
        body=body,
        no_retry=no_retry,
        sdk_version=SDK_VERSION,
        request_version=request_version,
        system_trace_ctx=req.system_trace_ctx or b"{}",
        user_trace_ctx=req.user_trace_ctx or b"{}",
        run_id=req.run_id,
    )


def crash_reply(req: pb.GatewayExecutorRequestData, exc: BaseException) -> bytes:
    return pb.SDKResponse(
        request_id=req.request_id,
        status=pb.ERROR,
        body=b'{"code":"unknown","message":"internal error: %s"}' % type(exc).__name__.encode(),
        sdk_version=SDK_VERSION,
        request_version=2,
        system_trace_ctx=b"{}",
        user_trace_ctx=b"{}",
    ).SerializeToString()
