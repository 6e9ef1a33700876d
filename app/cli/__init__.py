"""The `fitserve` command. Each group of subcommands lives in its own module and registers itself:

- app/cli/server.py: serve, worker, migrate
- app/cli/keys.py: keys create|list|revoke
- fitserve_client/cli.py (the fitserve-client package, clients/python): train, jobs, datasets,
  predict
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = ("app.cli.server", "app.cli.keys", "fitserve_client.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fitserve", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue  # a command group not written yet
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
