"""`DirectRoute`: an APIRoute whose endpoint FastAPI has nothing to solve for is called directly.

FastAPI answers every request to a route through the same machinery: a Request built, two
exit stacks and an exception wrapper entered (`request_response`), the endpoint's parameters
solved and validated (`solve_dependencies`), the endpoint called, its Response sent. For an
endpoint that takes only its path parameters (as `str`) and the `Request`, and that no
dependency applies to, all of that does nothing but cost time: ~0.2 ms of CPU a request on this
VM, more than a 1-row prediction of a small network (bench/RESULTS.md, issue 12).

So `DirectRoute.handle` looks at what applies to the route *where it is included* — FastAPI
merges the dependencies of every enclosing router and `include_router(..., dependencies=...)`
into that inclusion's dependant — and:

- when nothing does, calls the endpoint itself with the path parameters and a Request, and
  sends its Response. An exception goes up to the app's ExceptionMiddleware, which runs the
  same handlers FastAPI's wrapper would have;
- when anything does (a dependency, a guard, an audit added to the router later, a body size
  limit), hands the request to FastAPI's own handling, which solves and runs it as for any route.

It is the route itself (one endpoint, one entry in the OpenAPI document), not a second path to it:
what is added to the route or to any router above it always runs
(tests/api/test_predict_route.py adds a router-level dependency and checks it runs for
cached-model predictions).
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.routing import APIRoute
from starlette.types import Receive, Scope, Send

# Where FastAPI (0.165, pinned) keeps the inclusion a request was routed through: its dependant
# holds every dependency that applies there. Should that ever move, the route is not found there
# and its own dependant is checked, which lacks the routers' dependencies: the router-level
# dependency test then fails rather than a dependency being skipped unnoticed.
_FASTAPI_SCOPE = "fastapi"
_ROUTE_CONTEXT = "effective_route_context"


class DirectRoute(APIRoute):
    def __init__(self, path: str, endpoint: Any, **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        dependant = self.dependant
        solved = (
            dependant.query_params,
            dependant.header_params,
            dependant.cookie_params,
            dependant.body_params,
        )
        special = (
            dependant.websocket_param_name,
            dependant.http_connection_param_name,
            dependant.response_param_name,
            dependant.background_tasks_param_name,
            dependant.security_scopes_param_name,
        )
        if any(solved) or any(special) or dependant.request_param_name is None:
            raise TypeError(
                f"DirectRoute {path}: the endpoint may take only its path parameters (str) and "
                "the Request; read anything else from the request"
            )
        for param in dependant.path_params:
            if param.field_info.annotation is not str:
                raise TypeError(f"DirectRoute {path}: path parameter {param.name!r} must be str")
        self._request_param = dependant.request_param_name
        self._methods = frozenset(self.methods or ())

    def _nothing_to_solve(self, scope: Scope) -> bool:
        context = scope.get(_FASTAPI_SCOPE, {}).get(_ROUTE_CONTEXT)
        if context is None or context.original_route is not self:
            return not self.dependant.dependencies and self.max_body_size is None
        return not context.dependant.dependencies and context.max_body_size is None

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] not in self._methods or not self._nothing_to_solve(scope):
            await super().handle(scope, receive, send)  # FastAPI's own handling (and its 405)
            return
        request = Request(scope, receive, send)
        response = await self.endpoint(**scope["path_params"], **{self._request_param: request})
        await response(scope, receive, send)
