"""The Python client moved to its own package, fitserve-client (clients/python), which needs no
torch; this module re-exports it so `from app.client import FitserveClient` keeps working."""

from fitserve_client.client import *  # noqa: F403
from fitserve_client.client import DEFAULT_SERVER, __all__
from fitserve_client.client_types import EventParser, error_from_response

__all__ = [*__all__, "DEFAULT_SERVER", "EventParser", "error_from_response"]
