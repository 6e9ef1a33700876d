"""fitserve: the service (settings, database, API, queue, worker, client, CLI)."""
