"""The service as an A2A agent (card, skills, executor, task store) and an A2A client CLI.

a2a-sdk wraps its server classes in OpenTelemetry spans whenever opentelemetry-api is
importable; without an exporter they only cost CPU on every call, so they are off unless
OTEL_INSTRUMENTATION_A2A_SDK_ENABLED=true is set. The SDK reads the variable on import,
hence here, before any ``a2a`` module loads.
"""

import os

os.environ.setdefault("OTEL_INSTRUMENTATION_A2A_SDK_ENABLED", "false")
