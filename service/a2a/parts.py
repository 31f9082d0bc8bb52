"""Building the parts of A2A messages and artifacts."""

from __future__ import annotations

from a2a.types import Part
from google.protobuf.json_format import ParseDict
from google.protobuf.struct_pb2 import Value
from google.protobuf.timestamp_pb2 import Timestamp

from service.core.errors import ServiceError


def data_part(value: object) -> Part:
    return Part(data=ParseDict(value, Value()), media_type="application/json")


def text_part(text: str) -> Part:
    return Part(text=text, media_type="text/plain")


def failure_parts(error: ServiceError) -> list[Part]:
    """A failed or rejected task's status message, from the one error table: the text, and
    the details as data with the problem type as ``reason``."""
    return [text_part(error.task_text()), data_part({"reason": error.problem, **error.details()})]


def now() -> Timestamp:
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp
