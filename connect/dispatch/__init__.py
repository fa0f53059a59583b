"""The executor⇄gateway port: what the executor sends and gets back, and the flow of one request."""

from connect.dispatch.failures import AtCapacity, DispatchError, NoWorker, WorkerStoppedResponding
from connect.dispatch.messages import CheckpointTaken, Join, StepReply, StepRequest, Stored
from connect.dispatch.port import Dispatcher

__all__ = [
    "AtCapacity",
    "CheckpointTaken",
    "DispatchError",
    "Dispatcher",
    "Join",
    "NoWorker",
    "StepReply",
    "StepRequest",
    "Stored",
    "WorkerStoppedResponding",
]
