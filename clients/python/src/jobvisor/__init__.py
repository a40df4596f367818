"""A worker library for jobvisor's worker protocol (``WorkerService.Work``):
a Python process takes the items of jobs whose executor it serves.

::

    import jobvisor

    worker = jobvisor.Worker("127.0.0.1:50051", executor="ocr", slots=8)

    @worker.handler
    def handle(item):
        ...
        item.save_checkpoint(b"page=3")    # returns once it is committed
        if item.stopping.is_set():         # interrupted or draining
            return                         # reported `stopped`
        return "text"                      # reported `succeeded`

    worker.run()                           # until SIGTERM / Ctrl-C has drained it

See the package's README for the semantics of ``stopping``, checkpoints and
slots.
"""

from ._errors import CheckpointRefused, Done, Fail, ItemRevoked, Retry, WorkerError
from ._item import AsyncItem, BaseItem, Item, StopReason
from ._version import __version__
from ._worker import Worker

__all__ = [
    "Worker",
    "Item",
    "AsyncItem",
    "BaseItem",
    "StopReason",
    "Retry",
    "Fail",
    "Done",
    "CheckpointRefused",
    "ItemRevoked",
    "WorkerError",
    "__version__",
]
