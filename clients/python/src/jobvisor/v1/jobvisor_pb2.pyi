import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_PAUSING: _ClassVar[JobState]
    JOB_STATE_PAUSED: _ClassVar[JobState]
    JOB_STATE_CANCELLING: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]

class PauseMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PAUSE_MODE_UNSPECIFIED: _ClassVar[PauseMode]
    PAUSE_MODE_GRACEFUL: _ClassVar[PauseMode]
    PAUSE_MODE_IMMEDIATE: _ClassVar[PauseMode]

class ItemState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ITEM_STATE_UNSPECIFIED: _ClassVar[ItemState]
    ITEM_STATE_PENDING: _ClassVar[ItemState]
    ITEM_STATE_RUNNING: _ClassVar[ItemState]
    ITEM_STATE_SUCCEEDED: _ClassVar[ItemState]
    ITEM_STATE_FAILED: _ClassVar[ItemState]
    ITEM_STATE_CANCELLED: _ClassVar[ItemState]

class RunOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_OUTCOME_UNSPECIFIED: _ClassVar[RunOutcome]
    RUN_OUTCOME_STARTED: _ClassVar[RunOutcome]
    RUN_OUTCOME_RESUMED: _ClassVar[RunOutcome]
    RUN_OUTCOME_ALREADY_RUNNING: _ClassVar[RunOutcome]

class ControlAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONTROL_ACTION_UNSPECIFIED: _ClassVar[ControlAction]
    CONTROL_ACTION_PAUSE: _ClassVar[ControlAction]
    CONTROL_ACTION_RESUME: _ClassVar[ControlAction]
    CONTROL_ACTION_CANCEL: _ClassVar[ControlAction]
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_PAUSING: JobState
JOB_STATE_PAUSED: JobState
JOB_STATE_CANCELLING: JobState
JOB_STATE_CANCELLED: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
PAUSE_MODE_UNSPECIFIED: PauseMode
PAUSE_MODE_GRACEFUL: PauseMode
PAUSE_MODE_IMMEDIATE: PauseMode
ITEM_STATE_UNSPECIFIED: ItemState
ITEM_STATE_PENDING: ItemState
ITEM_STATE_RUNNING: ItemState
ITEM_STATE_SUCCEEDED: ItemState
ITEM_STATE_FAILED: ItemState
ITEM_STATE_CANCELLED: ItemState
RUN_OUTCOME_UNSPECIFIED: RunOutcome
RUN_OUTCOME_STARTED: RunOutcome
RUN_OUTCOME_RESUMED: RunOutcome
RUN_OUTCOME_ALREADY_RUNNING: RunOutcome
CONTROL_ACTION_UNSPECIFIED: ControlAction
CONTROL_ACTION_PAUSE: ControlAction
CONTROL_ACTION_RESUME: ControlAction
CONTROL_ACTION_CANCEL: ControlAction

class StartJobRequest(_message.Message):
    __slots__ = ("name", "executor", "items", "concurrency", "params", "labels", "max_attempts", "request_id", "timeout", "pause_after_failures", "pause_on_failure_ratio", "failure_window", "retry_delay", "retry_delay_max", "start_paused", "resume_at", "rate_limit", "rate_period", "validate_only", "exclusive", "open")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    PAUSE_AFTER_FAILURES_FIELD_NUMBER: _ClassVar[int]
    PAUSE_ON_FAILURE_RATIO_FIELD_NUMBER: _ClassVar[int]
    FAILURE_WINDOW_FIELD_NUMBER: _ClassVar[int]
    RETRY_DELAY_FIELD_NUMBER: _ClassVar[int]
    RETRY_DELAY_MAX_FIELD_NUMBER: _ClassVar[int]
    START_PAUSED_FIELD_NUMBER: _ClassVar[int]
    RESUME_AT_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    RATE_PERIOD_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    EXCLUSIVE_FIELD_NUMBER: _ClassVar[int]
    OPEN_FIELD_NUMBER: _ClassVar[int]
    name: str
    executor: str
    items: _containers.RepeatedScalarFieldContainer[str]
    concurrency: int
    params: _containers.ScalarMap[str, str]
    labels: _containers.ScalarMap[str, str]
    max_attempts: int
    request_id: str
    timeout: _duration_pb2.Duration
    pause_after_failures: int
    pause_on_failure_ratio: float
    failure_window: int
    retry_delay: _duration_pb2.Duration
    retry_delay_max: _duration_pb2.Duration
    start_paused: bool
    resume_at: _timestamp_pb2.Timestamp
    rate_limit: int
    rate_period: _duration_pb2.Duration
    validate_only: bool
    exclusive: bool
    open: bool
    def __init__(self, name: _Optional[str] = ..., executor: _Optional[str] = ..., items: _Optional[_Iterable[str]] = ..., concurrency: _Optional[int] = ..., params: _Optional[_Mapping[str, str]] = ..., labels: _Optional[_Mapping[str, str]] = ..., max_attempts: _Optional[int] = ..., request_id: _Optional[str] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., pause_after_failures: _Optional[int] = ..., pause_on_failure_ratio: _Optional[float] = ..., failure_window: _Optional[int] = ..., retry_delay: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., retry_delay_max: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., start_paused: _Optional[bool] = ..., resume_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., rate_limit: _Optional[int] = ..., rate_period: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., validate_only: _Optional[bool] = ..., exclusive: _Optional[bool] = ..., open: _Optional[bool] = ...) -> None: ...

class AddItemsRequest(_message.Message):
    __slots__ = ("job_id", "items", "request_id", "close")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CLOSE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    items: _containers.RepeatedScalarFieldContainer[str]
    request_id: str
    close: bool
    def __init__(self, job_id: _Optional[str] = ..., items: _Optional[_Iterable[str]] = ..., request_id: _Optional[str] = ..., close: _Optional[bool] = ...) -> None: ...

class AddItemsResponse(_message.Message):
    __slots__ = ("job", "first_index", "added")
    JOB_FIELD_NUMBER: _ClassVar[int]
    FIRST_INDEX_FIELD_NUMBER: _ClassVar[int]
    ADDED_FIELD_NUMBER: _ClassVar[int]
    job: Job
    first_index: int
    added: int
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ..., first_index: _Optional[int] = ..., added: _Optional[int] = ...) -> None: ...

class RunJobRequest(_message.Message):
    __slots__ = ("job", "reason")
    JOB_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    job: StartJobRequest
    reason: str
    def __init__(self, job: _Optional[_Union[StartJobRequest, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class RunJobResponse(_message.Message):
    __slots__ = ("job", "outcome")
    JOB_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    job: Job
    outcome: RunOutcome
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ..., outcome: _Optional[_Union[RunOutcome, str]] = ...) -> None: ...

class RetryFailedItemsRequest(_message.Message):
    __slots__ = ("job_id", "request_id")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    request_id: str
    def __init__(self, job_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class CancelItemsRequest(_message.Message):
    __slots__ = ("job_id", "indexes", "range", "states", "reason")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    INDEXES_FIELD_NUMBER: _ClassVar[int]
    RANGE_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    indexes: _containers.RepeatedScalarFieldContainer[int]
    range: ItemRange
    states: _containers.RepeatedScalarFieldContainer[ItemState]
    reason: str
    def __init__(self, job_id: _Optional[str] = ..., indexes: _Optional[_Iterable[int]] = ..., range: _Optional[_Union[ItemRange, _Mapping]] = ..., states: _Optional[_Iterable[_Union[ItemState, str]]] = ..., reason: _Optional[str] = ...) -> None: ...

class ItemRange(_message.Message):
    __slots__ = ("first", "last")
    FIRST_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    first: int
    last: int
    def __init__(self, first: _Optional[int] = ..., last: _Optional[int] = ...) -> None: ...

class CancelItemsResponse(_message.Message):
    __slots__ = ("job", "cancelled", "interrupted")
    JOB_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    INTERRUPTED_FIELD_NUMBER: _ClassVar[int]
    job: Job
    cancelled: int
    interrupted: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ..., cancelled: _Optional[int] = ..., interrupted: _Optional[_Iterable[int]] = ...) -> None: ...

class SetJobRateLimitRequest(_message.Message):
    __slots__ = ("job_id", "rate_limit", "rate_period", "request_id")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    RATE_PERIOD_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    rate_limit: int
    rate_period: _duration_pb2.Duration
    request_id: str
    def __init__(self, job_id: _Optional[str] = ..., rate_limit: _Optional[int] = ..., rate_period: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class SetJobConcurrencyRequest(_message.Message):
    __slots__ = ("job_id", "concurrency", "request_id")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    concurrency: int
    request_id: str
    def __init__(self, job_id: _Optional[str] = ..., concurrency: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class ControlJobsRequest(_message.Message):
    __slots__ = ("action", "job_ids", "labels", "mode", "drain_timeout", "resume_at", "reason", "request_id")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ACTION_FIELD_NUMBER: _ClassVar[int]
    JOB_IDS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    DRAIN_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    RESUME_AT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    action: ControlAction
    job_ids: _containers.RepeatedScalarFieldContainer[str]
    labels: _containers.ScalarMap[str, str]
    mode: PauseMode
    drain_timeout: _duration_pb2.Duration
    resume_at: _timestamp_pb2.Timestamp
    reason: str
    request_id: str
    def __init__(self, action: _Optional[_Union[ControlAction, str]] = ..., job_ids: _Optional[_Iterable[str]] = ..., labels: _Optional[_Mapping[str, str]] = ..., mode: _Optional[_Union[PauseMode, str]] = ..., drain_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., resume_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class ControlJobsResponse(_message.Message):
    __slots__ = ("outcomes",)
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    outcomes: _containers.RepeatedCompositeFieldContainer[ControlOutcome]
    def __init__(self, outcomes: _Optional[_Iterable[_Union[ControlOutcome, _Mapping]]] = ...) -> None: ...

class ControlOutcome(_message.Message):
    __slots__ = ("job_id", "job", "error_code", "error_message")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    job: Job
    error_code: str
    error_message: str
    def __init__(self, job_id: _Optional[str] = ..., job: _Optional[_Union[Job, _Mapping]] = ..., error_code: _Optional[str] = ..., error_message: _Optional[str] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class DeleteJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class DeleteJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "states", "labels", "name")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    states: _containers.RepeatedScalarFieldContainer[JobState]
    labels: _containers.ScalarMap[str, str]
    name: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., states: _Optional[_Iterable[_Union[JobState, str]]] = ..., labels: _Optional[_Mapping[str, str]] = ..., name: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListJobItemsRequest(_message.Message):
    __slots__ = ("job_id", "page_size", "page_token", "states")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    page_size: int
    page_token: str
    states: _containers.RepeatedScalarFieldContainer[ItemState]
    def __init__(self, job_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., states: _Optional[_Iterable[_Union[ItemState, str]]] = ...) -> None: ...

class ListJobItemsResponse(_message.Message):
    __slots__ = ("items", "next_page_token")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Item]
    next_page_token: str
    def __init__(self, items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class PauseJobRequest(_message.Message):
    __slots__ = ("job_id", "mode", "reason", "request_id", "drain_timeout", "resume_at")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DRAIN_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    RESUME_AT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    mode: PauseMode
    reason: str
    request_id: str
    drain_timeout: _duration_pb2.Duration
    resume_at: _timestamp_pb2.Timestamp
    def __init__(self, job_id: _Optional[str] = ..., mode: _Optional[_Union[PauseMode, str]] = ..., reason: _Optional[str] = ..., request_id: _Optional[str] = ..., drain_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., resume_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ResumeJobRequest(_message.Message):
    __slots__ = ("job_id", "request_id")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    request_id: str
    def __init__(self, job_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id", "reason", "request_id")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    reason: str
    request_id: str
    def __init__(self, job_id: _Optional[str] = ..., reason: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("job_id", "from_sequence", "window")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    from_sequence: int
    window: _duration_pb2.Duration
    def __init__(self, job_id: _Optional[str] = ..., from_sequence: _Optional[int] = ..., window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("id", "name", "executor", "state", "counts", "concurrency", "max_attempts", "params", "labels", "create_time", "start_time", "update_time", "end_time", "pauses", "can_pause", "can_resume", "can_cancel", "last_error", "last_sequence", "request_id", "policy", "owner", "waiting_for", "exclusive", "status", "open", "counters")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class CountersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    PAUSES_FIELD_NUMBER: _ClassVar[int]
    CAN_PAUSE_FIELD_NUMBER: _ClassVar[int]
    CAN_RESUME_FIELD_NUMBER: _ClassVar[int]
    CAN_CANCEL_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    WAITING_FOR_FIELD_NUMBER: _ClassVar[int]
    EXCLUSIVE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    OPEN_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    executor: str
    state: JobState
    counts: ItemCounts
    concurrency: int
    max_attempts: int
    params: _containers.ScalarMap[str, str]
    labels: _containers.ScalarMap[str, str]
    create_time: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    pauses: _containers.RepeatedCompositeFieldContainer[PauseRecord]
    can_pause: bool
    can_resume: bool
    can_cancel: bool
    last_error: str
    last_sequence: int
    request_id: str
    policy: JobPolicy
    owner: JobOwner
    waiting_for: str
    exclusive: bool
    status: JobStatus
    open: bool
    counters: _containers.ScalarMap[str, int]
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., executor: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., counts: _Optional[_Union[ItemCounts, _Mapping]] = ..., concurrency: _Optional[int] = ..., max_attempts: _Optional[int] = ..., params: _Optional[_Mapping[str, str]] = ..., labels: _Optional[_Mapping[str, str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., pauses: _Optional[_Iterable[_Union[PauseRecord, _Mapping]]] = ..., can_pause: _Optional[bool] = ..., can_resume: _Optional[bool] = ..., can_cancel: _Optional[bool] = ..., last_error: _Optional[str] = ..., last_sequence: _Optional[int] = ..., request_id: _Optional[str] = ..., policy: _Optional[_Union[JobPolicy, _Mapping]] = ..., owner: _Optional[_Union[JobOwner, _Mapping]] = ..., waiting_for: _Optional[str] = ..., exclusive: _Optional[bool] = ..., status: _Optional[_Union[JobStatus, _Mapping]] = ..., open: _Optional[bool] = ..., counters: _Optional[_Mapping[str, int]] = ...) -> None: ...

class JobStatus(_message.Message):
    __slots__ = ("active_time", "items_per_second", "eta", "running_items")
    ACTIVE_TIME_FIELD_NUMBER: _ClassVar[int]
    ITEMS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    ETA_FIELD_NUMBER: _ClassVar[int]
    RUNNING_ITEMS_FIELD_NUMBER: _ClassVar[int]
    active_time: _duration_pb2.Duration
    items_per_second: float
    eta: _duration_pb2.Duration
    running_items: _containers.RepeatedCompositeFieldContainer[Item]
    def __init__(self, active_time: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., items_per_second: _Optional[float] = ..., eta: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., running_items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ...) -> None: ...

class JobOwner(_message.Message):
    __slots__ = ("server", "host", "pid", "since_time")
    SERVER_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    SINCE_TIME_FIELD_NUMBER: _ClassVar[int]
    server: str
    host: str
    pid: int
    since_time: _timestamp_pb2.Timestamp
    def __init__(self, server: _Optional[str] = ..., host: _Optional[str] = ..., pid: _Optional[int] = ..., since_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class JobPolicy(_message.Message):
    __slots__ = ("timeout", "pause_after_failures", "pause_on_failure_ratio", "failure_window", "retry_delay", "retry_delay_max", "rate_limit", "rate_period")
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    PAUSE_AFTER_FAILURES_FIELD_NUMBER: _ClassVar[int]
    PAUSE_ON_FAILURE_RATIO_FIELD_NUMBER: _ClassVar[int]
    FAILURE_WINDOW_FIELD_NUMBER: _ClassVar[int]
    RETRY_DELAY_FIELD_NUMBER: _ClassVar[int]
    RETRY_DELAY_MAX_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    RATE_PERIOD_FIELD_NUMBER: _ClassVar[int]
    timeout: _duration_pb2.Duration
    pause_after_failures: int
    pause_on_failure_ratio: float
    failure_window: int
    retry_delay: _duration_pb2.Duration
    retry_delay_max: _duration_pb2.Duration
    rate_limit: int
    rate_period: _duration_pb2.Duration
    def __init__(self, timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., pause_after_failures: _Optional[int] = ..., pause_on_failure_ratio: _Optional[float] = ..., failure_window: _Optional[int] = ..., retry_delay: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., retry_delay_max: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., rate_limit: _Optional[int] = ..., rate_period: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class ItemCounts(_message.Message):
    __slots__ = ("total", "pending", "running", "succeeded", "failed", "cancelled")
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    total: int
    pending: int
    running: int
    succeeded: int
    failed: int
    cancelled: int
    def __init__(self, total: _Optional[int] = ..., pending: _Optional[int] = ..., running: _Optional[int] = ..., succeeded: _Optional[int] = ..., failed: _Optional[int] = ..., cancelled: _Optional[int] = ...) -> None: ...

class PauseRecord(_message.Message):
    __slots__ = ("mode", "reason", "requested_by", "request_id", "request_time", "paused_time", "resume_time", "scheduled_resume_time")
    MODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_TIME_FIELD_NUMBER: _ClassVar[int]
    PAUSED_TIME_FIELD_NUMBER: _ClassVar[int]
    RESUME_TIME_FIELD_NUMBER: _ClassVar[int]
    SCHEDULED_RESUME_TIME_FIELD_NUMBER: _ClassVar[int]
    mode: PauseMode
    reason: str
    requested_by: str
    request_id: str
    request_time: _timestamp_pb2.Timestamp
    paused_time: _timestamp_pb2.Timestamp
    resume_time: _timestamp_pb2.Timestamp
    scheduled_resume_time: _timestamp_pb2.Timestamp
    def __init__(self, mode: _Optional[_Union[PauseMode, str]] = ..., reason: _Optional[str] = ..., requested_by: _Optional[str] = ..., request_id: _Optional[str] = ..., request_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., paused_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., resume_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., scheduled_resume_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Item(_message.Message):
    __slots__ = ("index", "payload", "state", "attempts", "last_error", "checkpoint", "update_time", "result", "retry_time", "skip_reason")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    RETRY_TIME_FIELD_NUMBER: _ClassVar[int]
    SKIP_REASON_FIELD_NUMBER: _ClassVar[int]
    index: int
    payload: str
    state: ItemState
    attempts: int
    last_error: str
    checkpoint: bytes
    update_time: _timestamp_pb2.Timestamp
    result: str
    retry_time: _timestamp_pb2.Timestamp
    skip_reason: str
    def __init__(self, index: _Optional[int] = ..., payload: _Optional[str] = ..., state: _Optional[_Union[ItemState, str]] = ..., attempts: _Optional[int] = ..., last_error: _Optional[str] = ..., checkpoint: _Optional[bytes] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., result: _Optional[str] = ..., retry_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., skip_reason: _Optional[str] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("sequence", "time", "snapshot", "state_changed", "item_failed", "worker_restarted", "progress", "concurrency_changed", "owner_changed", "rate_limit_changed", "items_added", "items_cancelled")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    STATE_CHANGED_FIELD_NUMBER: _ClassVar[int]
    ITEM_FAILED_FIELD_NUMBER: _ClassVar[int]
    WORKER_RESTARTED_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_CHANGED_FIELD_NUMBER: _ClassVar[int]
    OWNER_CHANGED_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_CHANGED_FIELD_NUMBER: _ClassVar[int]
    ITEMS_ADDED_FIELD_NUMBER: _ClassVar[int]
    ITEMS_CANCELLED_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    time: _timestamp_pb2.Timestamp
    snapshot: Job
    state_changed: StateChanged
    item_failed: ItemFailed
    worker_restarted: WorkerRestarted
    progress: Progress
    concurrency_changed: ConcurrencyChanged
    owner_changed: OwnerChanged
    rate_limit_changed: RateLimitChanged
    items_added: ItemsAdded
    items_cancelled: ItemsCancelled
    def __init__(self, sequence: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., snapshot: _Optional[_Union[Job, _Mapping]] = ..., state_changed: _Optional[_Union[StateChanged, _Mapping]] = ..., item_failed: _Optional[_Union[ItemFailed, _Mapping]] = ..., worker_restarted: _Optional[_Union[WorkerRestarted, _Mapping]] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., concurrency_changed: _Optional[_Union[ConcurrencyChanged, _Mapping]] = ..., owner_changed: _Optional[_Union[OwnerChanged, _Mapping]] = ..., rate_limit_changed: _Optional[_Union[RateLimitChanged, _Mapping]] = ..., items_added: _Optional[_Union[ItemsAdded, _Mapping]] = ..., items_cancelled: _Optional[_Union[ItemsCancelled, _Mapping]] = ...) -> None: ...

class ItemsCancelled(_message.Message):
    __slots__ = ("count", "first_index", "last_index", "reason", "requested_by")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    FIRST_INDEX_FIELD_NUMBER: _ClassVar[int]
    LAST_INDEX_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    count: int
    first_index: int
    last_index: int
    reason: str
    requested_by: str
    def __init__(self, count: _Optional[int] = ..., first_index: _Optional[int] = ..., last_index: _Optional[int] = ..., reason: _Optional[str] = ..., requested_by: _Optional[str] = ...) -> None: ...

class ItemsAdded(_message.Message):
    __slots__ = ("first_index", "count", "closed", "requested_by", "request_id")
    FIRST_INDEX_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    first_index: int
    count: int
    closed: bool
    requested_by: str
    request_id: str
    def __init__(self, first_index: _Optional[int] = ..., count: _Optional[int] = ..., closed: _Optional[bool] = ..., requested_by: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class RateLimitChanged(_message.Message):
    __slots__ = ("from_limit", "from_period", "to_limit", "to_period", "requested_by", "request_id")
    FROM_LIMIT_FIELD_NUMBER: _ClassVar[int]
    FROM_PERIOD_FIELD_NUMBER: _ClassVar[int]
    TO_LIMIT_FIELD_NUMBER: _ClassVar[int]
    TO_PERIOD_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    from_limit: int
    from_period: _duration_pb2.Duration
    to_limit: int
    to_period: _duration_pb2.Duration
    requested_by: str
    request_id: str
    def __init__(self, from_limit: _Optional[int] = ..., from_period: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., to_limit: _Optional[int] = ..., to_period: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., requested_by: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class OwnerChanged(_message.Message):
    __slots__ = ("owner", "previous_owner", "released_items")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_OWNER_FIELD_NUMBER: _ClassVar[int]
    RELEASED_ITEMS_FIELD_NUMBER: _ClassVar[int]
    owner: str
    previous_owner: str
    released_items: int
    def __init__(self, owner: _Optional[str] = ..., previous_owner: _Optional[str] = ..., released_items: _Optional[int] = ...) -> None: ...

class ConcurrencyChanged(_message.Message):
    __slots__ = ("to", "requested_by", "request_id")
    FROM_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    to: int
    requested_by: str
    request_id: str
    def __init__(self, to: _Optional[int] = ..., requested_by: _Optional[str] = ..., request_id: _Optional[str] = ..., **kwargs) -> None: ...

class StateChanged(_message.Message):
    __slots__ = ("to", "reason", "requested_by", "request_id", "pause_mode")
    FROM_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PAUSE_MODE_FIELD_NUMBER: _ClassVar[int]
    to: JobState
    reason: str
    requested_by: str
    request_id: str
    pause_mode: PauseMode
    def __init__(self, to: _Optional[_Union[JobState, str]] = ..., reason: _Optional[str] = ..., requested_by: _Optional[str] = ..., request_id: _Optional[str] = ..., pause_mode: _Optional[_Union[PauseMode, str]] = ..., **kwargs) -> None: ...

class ItemFailed(_message.Message):
    __slots__ = ("index", "attempt", "error", "will_retry", "retry_time")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    WILL_RETRY_FIELD_NUMBER: _ClassVar[int]
    RETRY_TIME_FIELD_NUMBER: _ClassVar[int]
    index: int
    attempt: int
    error: str
    will_retry: bool
    retry_time: _timestamp_pb2.Timestamp
    def __init__(self, index: _Optional[int] = ..., attempt: _Optional[int] = ..., error: _Optional[str] = ..., will_retry: _Optional[bool] = ..., retry_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class WorkerRestarted(_message.Message):
    __slots__ = ("index", "reason", "restarts_in_window")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_IN_WINDOW_FIELD_NUMBER: _ClassVar[int]
    index: int
    reason: str
    restarts_in_window: int
    def __init__(self, index: _Optional[int] = ..., reason: _Optional[str] = ..., restarts_in_window: _Optional[int] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("counts", "items_per_second", "eta", "in_flight_fraction", "counters")
    class CountersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    ITEMS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    ETA_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FRACTION_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    counts: ItemCounts
    items_per_second: float
    eta: _duration_pb2.Duration
    in_flight_fraction: float
    counters: _containers.ScalarMap[str, int]
    def __init__(self, counts: _Optional[_Union[ItemCounts, _Mapping]] = ..., items_per_second: _Optional[float] = ..., eta: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., in_flight_fraction: _Optional[float] = ..., counters: _Optional[_Mapping[str, int]] = ...) -> None: ...
