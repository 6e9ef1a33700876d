"""Thin routers, one per resource: parse, call one service function, return."""
