"""Settings: one typed, frozen object read from the environment (prefix FITSERVE_)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

# prometheus_client's own variable, not a setting: where it is set as a process starts, that
# process' metrics live in files there (app/prometheus.py). `fitserve serve` sets it, for its API
# processes alone, to a directory of its own; never to one a user names.
MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

# The most text one cell of a numeric CSV takes: any float64 written in full with its separator.
BYTES_PER_CSV_CELL = 32


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FITSERVE_", frozen=True, extra="ignore")

    # The embedded default: one SQLite file beside the process; Postgres for production.
    database_url: str = "sqlite:///./fitserve.db"
    # Loopback only unless asked: a training service must not be open to the network by default.
    host: str = "127.0.0.1"
    port: int = 8000

    # Queue. A lease outlives several missed heartbeats (>= 3x) before another worker takes over.
    lease_seconds: float = 30.0
    heartbeat_seconds: float = 5.0
    # How often an idle worker looks for work where no LISTEN/NOTIFY wake-up exists (SQLite).
    poll_seconds: float = 0.5
    # A job that kills its worker this many times ends failed(worker_lost) instead of crash-looping.
    max_attempts: int = 3
    # Backoff before re-running an attempt that crashed: doubles per attempt (2 s, 4 s, ...).
    retry_backoff_seconds: float = 2.0
    # On SIGTERM a worker lets the running epoch finish (and checkpoint) for this long, then
    # stops at the next batch and hands the job back.
    shutdown_grace_seconds: float = 10.0
    # Worker device: auto (CUDA when present), cpu, cuda, cuda:N.
    device: str = "auto"
    # CPU threads per training process; None = torch's default (every core). `fitserve serve`
    # sets cores / workers so workers don't oversubscribe (OpenMP spin-waits make that slow).
    cpu_threads: int | None = None

    # Predictions: eval-mode networks kept in memory, least recently used evicted first.
    model_cache_size: int = 32

    # Limits (issue: every input checked). Generous for teaching-size work, small enough to stay up.
    max_body_bytes: int = 64 * 1024 * 1024
    # JSON bodies of routes that take a spec, a config or names rather than data (jobs, networks,
    # studies, registry): FastAPI parses them on the event loop (~25-50 ms per MB, every other
    # request waiting), and the largest real one, a 100-layer spec, is a few kB.
    max_json_body_bytes: int = 1024 * 1024
    # A JSON dataset body up to this is parsed in a thread of the API (at most ~25-50 ms of the
    # GIL); a bigger one in a helper process (app/intake.py), or every other request would wait.
    intake_in_process_bytes: int = 1024 * 1024
    max_dataset_cells: int = 20_000_000
    # A file upload (multipart) is spooled to disk and parsed block by block, never held whole:
    # None derives its cap from the cell cap (`upload_bytes_limit`), so that every dataset under
    # the cell cap can be uploaded as CSV.
    max_upload_bytes: int | None = None
    # Token-list datasets count token ids, not the cells of the dense matrix they stand for:
    # Reuters is 1.3 M ids (89.8 M dense cells); 20 M ids is 160 MB stored as int64.
    max_dataset_tokens: int = 20_000_000
    max_params: int = 50_000_000
    # One training step's activations, as models/memory.py estimates them from the spec at
    # submit: 8 GiB fits beside a 50 M-parameter network's weights and Adam state on a 16 GB GPU
    # or a 16 GB CPU worker; a job past it would die on the worker with an allocator error.
    max_activation_bytes: int = 8 * 1024**3
    max_predict_rows: int = 10_000
    max_queued_jobs_per_key: int = 100
    # Fair share: jobs one API key may have on workers at once, so one key can't hold every
    # worker (`fitserve serve --workers N` lowers it to half its N workers, at least 1, unless
    # set). Keyless local jobs are not capped.
    max_running_jobs_per_key: int = 2
    # A job that has run on workers longer than this, its attempts together (a retried job gets
    # what its earlier attempts left), is stopped at its next batch and fails with error_code
    # time_limit: the budget no job can pass, whatever its epochs (100,000 of a small network
    # took ~2.5 h here). None: no limit.
    max_job_seconds: float | None = 6 * 3600.0

    # API keys: None = required exactly when the server binds a non-loopback address.
    require_api_keys: bool | None = None

    @field_validator("database_url")
    @classmethod
    def _normalise_database_url(cls, url: str) -> str:
        """Accept Postgres URLs as users write them and route them to the psycopg 3 driver."""
        for prefix in ("postgres://", "postgresql://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix) :]
        return url

    @property
    def upload_bytes_limit(self) -> int:
        """The file upload cap: 32 bytes a cell holds any float64 written in full, with its
        separator ("-1.2345678901234567e-308," is 25), and never below the JSON body cap."""
        if self.max_upload_bytes is not None:
            return self.max_upload_bytes
        return max(self.max_body_bytes, BYTES_PER_CSV_CELL * self.max_dataset_cells)

    @property
    def is_postgres(self) -> bool:
        return self.database_url.startswith("postgresql")

    @property
    def api_keys_required(self) -> bool:
        if self.require_api_keys is not None:
            return self.require_api_keys
        return self.host not in LOOPBACK_HOSTS


@lru_cache
def get_settings() -> Settings:
    """Settings from the environment; tests build their own Settings instead of calling this."""
    return Settings()
