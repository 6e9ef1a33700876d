"""The durable job queue: the job row is the queue entry (store.py) and the worker loop that
claims, trains and writes back under a fenced lease (worker.py; parent.py and child.py, the two
sides of the pipe to each training process, and protocol.py, what travels on it)."""
