"""The executor⇄gateway port: what the executor sends and gets back, and the flow of one request."""

from connect.dispatch.failures import AtCapacity, DispatchError, NoWorker, WorkerStoppedResponding
from connect.dispatch.messages import (
    CheckpointDecided,
    CheckpointJoined,
    CheckpointOffered,
    CheckpointTaken,
    ExecutorMessage,
    ReplySettled,
    StepReply,
    StepRequest,
)
from connect.dispatch.port import CheckpointReceiver, Port

__all__ = [
    "AtCapacity",
    "CheckpointDecided",
    "CheckpointJoined",
    "CheckpointOffered",
    "CheckpointReceiver",
    "CheckpointTaken",
    "DispatchError",
    "ExecutorMessage",
    "NoWorker",
    "Port",
    "ReplySettled",
    "StepReply",
    "StepRequest",
    "WorkerStoppedResponding",
]
