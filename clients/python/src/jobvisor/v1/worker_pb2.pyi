import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InterruptReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INTERRUPT_REASON_UNSPECIFIED: _ClassVar[InterruptReason]
    INTERRUPT_REASON_PAUSE: _ClassVar[InterruptReason]
    INTERRUPT_REASON_CANCEL: _ClassVar[InterruptReason]
    INTERRUPT_REASON_SHUTDOWN: _ClassVar[InterruptReason]
INTERRUPT_REASON_UNSPECIFIED: InterruptReason
INTERRUPT_REASON_PAUSE: InterruptReason
INTERRUPT_REASON_CANCEL: InterruptReason
INTERRUPT_REASON_SHUTDOWN: InterruptReason

class LendRequest(_message.Message):
    __slots__ = ("want", "give_back", "assign", "to_worker", "forget")
    WANT_FIELD_NUMBER: _ClassVar[int]
    GIVE_BACK_FIELD_NUMBER: _ClassVar[int]
    ASSIGN_FIELD_NUMBER: _ClassVar[int]
    TO_WORKER_FIELD_NUMBER: _ClassVar[int]
    FORGET_FIELD_NUMBER: _ClassVar[int]
    want: LendWant
    give_back: LendGiveBack
    assign: LendAssign
    to_worker: LendToWorker
    forget: LendForget
    def __init__(self, want: _Optional[_Union[LendWant, _Mapping]] = ..., give_back: _Optional[_Union[LendGiveBack, _Mapping]] = ..., assign: _Optional[_Union[LendAssign, _Mapping]] = ..., to_worker: _Optional[_Union[LendToWorker, _Mapping]] = ..., forget: _Optional[_Union[LendForget, _Mapping]] = ...) -> None: ...

class LendResponse(_message.Message):
    __slots__ = ("granted", "assigned", "assign_failed", "item_message")
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    ASSIGNED_FIELD_NUMBER: _ClassVar[int]
    ASSIGN_FAILED_FIELD_NUMBER: _ClassVar[int]
    ITEM_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    granted: LendGranted
    assigned: LendAssigned
    assign_failed: LendAssignFailed
    item_message: LendItemMessage
    def __init__(self, granted: _Optional[_Union[LendGranted, _Mapping]] = ..., assigned: _Optional[_Union[LendAssigned, _Mapping]] = ..., assign_failed: _Optional[_Union[LendAssignFailed, _Mapping]] = ..., item_message: _Optional[_Union[LendItemMessage, _Mapping]] = ...) -> None: ...

class LendWant(_message.Message):
    __slots__ = ("job_id", "executor", "labels", "seats")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SEATS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    executor: str
    labels: _containers.ScalarMap[str, str]
    seats: int
    def __init__(self, job_id: _Optional[str] = ..., executor: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., seats: _Optional[int] = ...) -> None: ...

class LendGiveBack(_message.Message):
    __slots__ = ("seat_id",)
    SEAT_ID_FIELD_NUMBER: _ClassVar[int]
    seat_id: int
    def __init__(self, seat_id: _Optional[int] = ...) -> None: ...

class LendAssign(_message.Message):
    __slots__ = ("seat_id", "item")
    SEAT_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_FIELD_NUMBER: _ClassVar[int]
    seat_id: int
    item: Assignment
    def __init__(self, seat_id: _Optional[int] = ..., item: _Optional[_Union[Assignment, _Mapping]] = ...) -> None: ...

class LendToWorker(_message.Message):
    __slots__ = ("token", "checkpoint_saved", "interrupt", "revoked", "refused")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_SAVED_FIELD_NUMBER: _ClassVar[int]
    INTERRUPT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    token: int
    checkpoint_saved: CheckpointSaved
    interrupt: WorkerInterrupt
    revoked: WorkerRevoked
    refused: WorkerRefused
    def __init__(self, token: _Optional[int] = ..., checkpoint_saved: _Optional[_Union[CheckpointSaved, _Mapping]] = ..., interrupt: _Optional[_Union[WorkerInterrupt, _Mapping]] = ..., revoked: _Optional[_Union[WorkerRevoked, _Mapping]] = ..., refused: _Optional[_Union[WorkerRefused, _Mapping]] = ...) -> None: ...

class LendForget(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class LendGranted(_message.Message):
    __slots__ = ("job_id", "seat_id")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SEAT_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    seat_id: int
    def __init__(self, job_id: _Optional[str] = ..., seat_id: _Optional[int] = ...) -> None: ...

class LendAssigned(_message.Message):
    __slots__ = ("seat_id", "token", "worker_name")
    SEAT_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    WORKER_NAME_FIELD_NUMBER: _ClassVar[int]
    seat_id: int
    token: int
    worker_name: str
    def __init__(self, seat_id: _Optional[int] = ..., token: _Optional[int] = ..., worker_name: _Optional[str] = ...) -> None: ...

class LendAssignFailed(_message.Message):
    __slots__ = ("seat_id", "reason")
    SEAT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    seat_id: int
    reason: str
    def __init__(self, seat_id: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class LendItemMessage(_message.Message):
    __slots__ = ("token", "checkpoint", "progress", "succeeded", "failed", "stopped", "lost")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    STOPPED_FIELD_NUMBER: _ClassVar[int]
    LOST_FIELD_NUMBER: _ClassVar[int]
    token: int
    checkpoint: WorkerCheckpoint
    progress: WorkerProgress
    succeeded: WorkerSucceeded
    failed: WorkerFailed
    stopped: WorkerStopped
    lost: str
    def __init__(self, token: _Optional[int] = ..., checkpoint: _Optional[_Union[WorkerCheckpoint, _Mapping]] = ..., progress: _Optional[_Union[WorkerProgress, _Mapping]] = ..., succeeded: _Optional[_Union[WorkerSucceeded, _Mapping]] = ..., failed: _Optional[_Union[WorkerFailed, _Mapping]] = ..., stopped: _Optional[_Union[WorkerStopped, _Mapping]] = ..., lost: _Optional[str] = ...) -> None: ...

class WorkRequest(_message.Message):
    __slots__ = ("hello", "credit", "checkpoint", "progress", "succeeded", "failed", "stopped", "drain", "ping", "batch")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    CREDIT_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    STOPPED_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    PING_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    hello: WorkerHello
    credit: WorkerCredit
    checkpoint: WorkerCheckpoint
    progress: WorkerProgress
    succeeded: WorkerSucceeded
    failed: WorkerFailed
    stopped: WorkerStopped
    drain: WorkerDrain
    ping: WorkerPing
    batch: WorkerBatch
    def __init__(self, hello: _Optional[_Union[WorkerHello, _Mapping]] = ..., credit: _Optional[_Union[WorkerCredit, _Mapping]] = ..., checkpoint: _Optional[_Union[WorkerCheckpoint, _Mapping]] = ..., progress: _Optional[_Union[WorkerProgress, _Mapping]] = ..., succeeded: _Optional[_Union[WorkerSucceeded, _Mapping]] = ..., failed: _Optional[_Union[WorkerFailed, _Mapping]] = ..., stopped: _Optional[_Union[WorkerStopped, _Mapping]] = ..., drain: _Optional[_Union[WorkerDrain, _Mapping]] = ..., ping: _Optional[_Union[WorkerPing, _Mapping]] = ..., batch: _Optional[_Union[WorkerBatch, _Mapping]] = ...) -> None: ...

class WorkerBatch(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[WorkRequest]
    def __init__(self, messages: _Optional[_Iterable[_Union[WorkRequest, _Mapping]]] = ...) -> None: ...

class WorkResponse(_message.Message):
    __slots__ = ("welcome", "assignments", "checkpoint_saved", "interrupt", "revoked", "refused", "ping")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_SAVED_FIELD_NUMBER: _ClassVar[int]
    INTERRUPT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    PING_FIELD_NUMBER: _ClassVar[int]
    welcome: WorkerWelcome
    assignments: WorkerAssignments
    checkpoint_saved: CheckpointSaved
    interrupt: WorkerInterrupt
    revoked: WorkerRevoked
    refused: WorkerRefused
    ping: WorkerPing
    def __init__(self, welcome: _Optional[_Union[WorkerWelcome, _Mapping]] = ..., assignments: _Optional[_Union[WorkerAssignments, _Mapping]] = ..., checkpoint_saved: _Optional[_Union[CheckpointSaved, _Mapping]] = ..., interrupt: _Optional[_Union[WorkerInterrupt, _Mapping]] = ..., revoked: _Optional[_Union[WorkerRevoked, _Mapping]] = ..., refused: _Optional[_Union[WorkerRefused, _Mapping]] = ..., ping: _Optional[_Union[WorkerPing, _Mapping]] = ...) -> None: ...

class WorkerHello(_message.Message):
    __slots__ = ("worker_name", "executors", "slots", "protocol_version", "build_id", "resume_session_id", "held_tokens")
    WORKER_NAME_FIELD_NUMBER: _ClassVar[int]
    EXECUTORS_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    BUILD_ID_FIELD_NUMBER: _ClassVar[int]
    RESUME_SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    HELD_TOKENS_FIELD_NUMBER: _ClassVar[int]
    worker_name: str
    executors: _containers.RepeatedScalarFieldContainer[str]
    slots: int
    protocol_version: int
    build_id: str
    resume_session_id: str
    held_tokens: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, worker_name: _Optional[str] = ..., executors: _Optional[_Iterable[str]] = ..., slots: _Optional[int] = ..., protocol_version: _Optional[int] = ..., build_id: _Optional[str] = ..., resume_session_id: _Optional[str] = ..., held_tokens: _Optional[_Iterable[int]] = ...) -> None: ...

class WorkerCredit(_message.Message):
    __slots__ = ("slots",)
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    slots: int
    def __init__(self, slots: _Optional[int] = ...) -> None: ...

class WorkerCheckpoint(_message.Message):
    __slots__ = ("token", "checkpoint_id", "data")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    token: int
    checkpoint_id: int
    data: bytes
    def __init__(self, token: _Optional[int] = ..., checkpoint_id: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class WorkerProgress(_message.Message):
    __slots__ = ("token", "fraction")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    token: int
    fraction: float
    def __init__(self, token: _Optional[int] = ..., fraction: _Optional[float] = ...) -> None: ...

class WorkerSucceeded(_message.Message):
    __slots__ = ("token", "result", "skip_reason", "counters")
    class CountersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    SKIP_REASON_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    token: int
    result: str
    skip_reason: str
    counters: _containers.ScalarMap[str, int]
    def __init__(self, token: _Optional[int] = ..., result: _Optional[str] = ..., skip_reason: _Optional[str] = ..., counters: _Optional[_Mapping[str, int]] = ...) -> None: ...

class WorkerFailed(_message.Message):
    __slots__ = ("token", "error", "permanent", "retry_after")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PERMANENT_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_FIELD_NUMBER: _ClassVar[int]
    token: int
    error: str
    permanent: bool
    retry_after: _duration_pb2.Duration
    def __init__(self, token: _Optional[int] = ..., error: _Optional[str] = ..., permanent: _Optional[bool] = ..., retry_after: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class WorkerStopped(_message.Message):
    __slots__ = ("token",)
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: int
    def __init__(self, token: _Optional[int] = ...) -> None: ...

class WorkerDrain(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WorkerPing(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WorkerWelcome(_message.Message):
    __slots__ = ("session_id", "heartbeat_interval", "lease_time", "resumed_tokens", "protocol_version", "server", "interrupt_grace", "batches")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    LEASE_TIME_FIELD_NUMBER: _ClassVar[int]
    RESUMED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    INTERRUPT_GRACE_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    heartbeat_interval: _duration_pb2.Duration
    lease_time: _duration_pb2.Duration
    resumed_tokens: _containers.RepeatedScalarFieldContainer[int]
    protocol_version: int
    server: str
    interrupt_grace: _duration_pb2.Duration
    batches: bool
    def __init__(self, session_id: _Optional[str] = ..., heartbeat_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., lease_time: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., resumed_tokens: _Optional[_Iterable[int]] = ..., protocol_version: _Optional[int] = ..., server: _Optional[str] = ..., interrupt_grace: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., batches: _Optional[bool] = ...) -> None: ...

class WorkerAssignments(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Assignment]
    def __init__(self, items: _Optional[_Iterable[_Union[Assignment, _Mapping]]] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("token", "job_id", "index", "payload", "attempt", "checkpoint", "params", "job_name", "executor", "trace_context")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class TraceContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    JOB_NAME_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    token: int
    job_id: str
    index: int
    payload: str
    attempt: int
    checkpoint: bytes
    params: _containers.ScalarMap[str, str]
    job_name: str
    executor: str
    trace_context: _containers.ScalarMap[str, str]
    def __init__(self, token: _Optional[int] = ..., job_id: _Optional[str] = ..., index: _Optional[int] = ..., payload: _Optional[str] = ..., attempt: _Optional[int] = ..., checkpoint: _Optional[bytes] = ..., params: _Optional[_Mapping[str, str]] = ..., job_name: _Optional[str] = ..., executor: _Optional[str] = ..., trace_context: _Optional[_Mapping[str, str]] = ...) -> None: ...

class CheckpointSaved(_message.Message):
    __slots__ = ("token", "checkpoint_id")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    token: int
    checkpoint_id: int
    def __init__(self, token: _Optional[int] = ..., checkpoint_id: _Optional[int] = ...) -> None: ...

class WorkerInterrupt(_message.Message):
    __slots__ = ("tokens", "reason")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedScalarFieldContainer[int]
    reason: InterruptReason
    def __init__(self, tokens: _Optional[_Iterable[int]] = ..., reason: _Optional[_Union[InterruptReason, str]] = ...) -> None: ...

class WorkerRevoked(_message.Message):
    __slots__ = ("token", "reason")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    token: int
    reason: str
    def __init__(self, token: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class WorkerRefused(_message.Message):
    __slots__ = ("token", "checkpoint_id", "reason", "message")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    token: int
    checkpoint_id: int
    reason: str
    message: str
    def __init__(self, token: _Optional[int] = ..., checkpoint_id: _Optional[int] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...
