"""fitserve's Python client: `FitserveClient` over httpx, typed results (pydantic), the error
tree, and the `fitserve-client` command line. Depends on httpx and pydantic only — no torch, no
server code — so a script that calls the API installs a few MB."""

from fitserve_client.client import *  # noqa: F403
from fitserve_client.client import DEFAULT_SERVER, __all__

__all__ = [*__all__, "DEFAULT_SERVER"]
