"""The SDK's identity as reported to the executor and the event API."""

from typing import Final

SDK_VERSION: Final = "connect-py:v0.1.0"
# The executor ⇄ SDK request version this engine speaks (x-inngest-req-version).
REQUEST_VERSION: Final = 2
