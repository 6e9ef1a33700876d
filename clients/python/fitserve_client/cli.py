"""`fitserve train|jobs|datasets|predict`: the command line on the Python client
(fitserve_client/client.py). The server's `fitserve` command registers these subcommands beside
serve/worker/keys; installed alone (no server, no torch) they are the `fitserve-client` command.

Progress and messages go to stderr; results a script wants (the model id, CSV predictions, JSON)
go to stdout, so `MODEL=$(fitserve train spec.json --dataset iris)` works.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import IO, Any

from fitserve_client.client import (
    DEFAULT_SERVER,
    EpochMetrics,
    FitserveClient,
    FitserveError,
    Job,
    JobFailed,
    Study,
)

BAR_WIDTH = 24


def register(subparsers: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--server",
        default=os.environ.get("FITSERVE_SERVER", DEFAULT_SERVER),
        help="the fitserve server (env FITSERVE_SERVER; default %(default)s)",
    )
    common.add_argument(
        "--api-key",
        default=os.environ.get("FITSERVE_API_KEY"),
        help="API key, sent as 'Authorization: Bearer KEY' (env FITSERVE_API_KEY)",
    )

    train = subparsers.add_parser(
        "train",
        parents=[common],
        help="train a network on a dataset, showing progress; prints the model id",
        description="Submit a training job and follow it epoch by epoch. SPEC is a JSON file "
        'holding {"network": ..., "training": ...} or just a network ({"layers": [...]}).',
    )
    train.add_argument("spec", type=Path, help="JSON file with the network (and training config)")
    train.add_argument("--dataset", required=True, help="dataset id or built-in name (iris, ...)")
    train.add_argument("--epochs", type=int, help="overrides training.epochs")
    train.add_argument("--batch-size", help="overrides training.batch_size (a number or 'full')")
    train.add_argument("--loss", help="overrides training.loss")
    train.add_argument("--name", help="a name for the job")
    train.add_argument(
        "--register-as", metavar="NAME", help="register the model as the next version of NAME"
    )
    train.add_argument(
        "--detach", action="store_true", help="print the job id and return without waiting"
    )
    train.set_defaults(handler=_train)

    tune = subparsers.add_parser(
        "tune",
        parents=[common],
        help="run a hyperparameter search, showing its trials; prints the best model id",
        description="Start a study and follow its trials in a live table (stderr). SPEC is a "
        'JSON file holding POST /v1/studies\' body: {"network", "training", "search_space", '
        '"objective", ...}; the options below override its fields.',
    )
    tune.add_argument("spec", type=Path, help="JSON file with the study")
    tune.add_argument("--dataset", help="dataset id or built-in name (overrides the file's)")
    tune.add_argument("--trials", type=int, help="n_trials")
    tune.add_argument("--parallel", type=int, help="max_parallel: trials in flight at once")
    tune.add_argument("--sampler", choices=["tpe", "random", "grid"])
    tune.add_argument("--pruner", choices=["median", "successive_halving", "hyperband", "none"])
    tune.add_argument("--name", help="the study's name (default: the file's stem)")
    tune.add_argument(
        "--detach", action="store_true", help="print the study id and return without waiting"
    )
    tune.set_defaults(handler=_tune)

    jobs = subparsers.add_parser("jobs", help="list, show or cancel training jobs")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")
    listing = jobs_sub.add_parser("list", parents=[common], help="jobs, newest first")
    listing.add_argument("--status", help="only jobs in this status (queued, running, ...)")
    listing.set_defaults(handler=_jobs_list)
    show = jobs_sub.add_parser("show", parents=[common], help="a job as JSON, with its metrics")
    show.add_argument("job_id")
    show.set_defaults(handler=_jobs_show)
    cancel = jobs_sub.add_parser("cancel", parents=[common], help="cancel a queued/running job")
    cancel.add_argument("job_id")
    cancel.set_defaults(handler=_jobs_cancel)

    names = subparsers.add_parser(
        "names", help="model names: list, show, register a model as a version, move an alias"
    )
    names_sub = names.add_subparsers(dest="names_command", required=True, metavar="ACTION")
    names_sub.add_parser("list", parents=[common], help="your model names").set_defaults(
        handler=_names_list
    )
    name_show = names_sub.add_parser(
        "show", parents=[common], help="a name's versions and aliases as JSON"
    )
    name_show.add_argument("name")
    name_show.set_defaults(handler=_names_show)
    name_register = names_sub.add_parser(
        "register", parents=[common], help="register a model as the name's next version"
    )
    name_register.add_argument("name")
    name_register.add_argument("model_id")
    name_register.set_defaults(handler=_names_register)
    name_alias = names_sub.add_parser(
        "alias", parents=[common], help="point an alias (production, staging...) at a version"
    )
    name_alias.add_argument("name")
    name_alias.add_argument("alias")
    name_alias.add_argument("version", type=int)
    name_alias.set_defaults(handler=_names_alias)
    name_unalias = names_sub.add_parser(
        "unalias", parents=[common], help="remove an alias (the name then serves its latest)"
    )
    name_unalias.add_argument("name")
    name_unalias.add_argument("alias")
    name_unalias.set_defaults(handler=_names_unalias)

    datasets = subparsers.add_parser("datasets", help="upload or list datasets")
    datasets_sub = datasets.add_subparsers(dest="datasets_command", required=True, metavar="ACTION")
    upload = datasets_sub.add_parser(
        "upload", parents=[common], help="upload a CSV file with a header row"
    )
    upload.add_argument("file", type=Path, help="CSV file; its first row names the columns")
    upload.add_argument(
        "--target", required=True, help="the column to predict (comma-separated for several)"
    )
    upload.add_argument("--name", help="dataset name (default: the file name)")
    upload.add_argument(
        "--task", choices=["classification", "regression"], help="default: inferred"
    )
    upload.set_defaults(handler=_datasets_upload)
    ds_list = datasets_sub.add_parser("list", parents=[common], help="datasets you can use")
    ds_list.set_defaults(handler=_datasets_list)

    predict = subparsers.add_parser(
        "predict",
        parents=[common],
        help="predict a CSV with a trained model; CSV out on stdout",
        description="Send a CSV whose columns include the dataset's feature columns; the "
        "predictions come back as CSV, streamed, in the same row order.",
    )
    predict.add_argument("model_id")
    predict.add_argument("--csv", required=True, help="input CSV file, or - for stdin")
    predict.set_defaults(handler=_predict)


def _client(args: argparse.Namespace) -> FitserveClient:
    return FitserveClient(args.server, api_key=args.api_key or None)


def _fail(message: str, code: int = 1) -> int:
    print(f"fitserve: error: {message}", file=sys.stderr)
    return code


# --- train ------------------------------------------------------------------------------------


def _read_spec(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        spec = json.loads(path.read_text())
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(spec, dict):
        raise ValueError(f'{path} must hold a JSON object: {{"network": ..., "training": ...}}')
    if "network" in spec:
        return spec["network"], dict(spec.get("training") or {})
    if "layers" in spec:
        return spec, {}
    raise ValueError(f'{path} must hold {{"network": ..., "training": ...}} or {{"layers": [...]}}')


def _train(args: argparse.Namespace) -> int:
    try:
        network, training = _read_spec(args.spec)
    except ValueError as exc:
        return _fail(str(exc), 2)
    if args.batch_size is not None:
        training["batch_size"] = (
            args.batch_size if args.batch_size == "full" else int(args.batch_size)
        )
    if args.loss is not None:
        training["loss"] = args.loss
    job: Job | None = None
    progress = Progress(sys.stderr, total=None)
    with _client(args) as client:
        try:
            job = client.submit(
                network,
                args.dataset,
                training,
                name=args.name,
                epochs=args.epochs,
                register_as=args.register_as,
            )
            if job.warning:
                print(f"fitserve: warning: {job.warning}", file=sys.stderr)
            if args.detach:
                print(job.id)
                return 0
            progress.total = job.epochs
            print(f"job {job.id} queued", file=sys.stderr)
            job = client.wait(job.id, on_epoch=progress.epoch, on_status=progress.status)
        except JobFailed as exc:
            progress.close()
            return _fail(str(exc))
        except FitserveError as exc:
            return _fail(str(exc))
        except KeyboardInterrupt:
            if job is not None:
                print(
                    f"\nstopped following; the job goes on (fitserve jobs cancel {job.id})",
                    file=sys.stderr,
                )
            return 130
    progress.close()
    summary = _metric_text(job.metrics or {})
    print(f"job {job.id} succeeded{': ' + summary if summary else ''}", file=sys.stderr)
    print(job.model_id)
    return 0


# --- tune -------------------------------------------------------------------------------------


def _study_body(args: argparse.Namespace) -> dict[str, Any]:
    try:
        body = json.loads(args.spec.read_text())
    except OSError as exc:
        raise ValueError(f"cannot read {args.spec}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{args.spec} is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ValueError(f"{args.spec} must hold a JSON object: POST /v1/studies' body")
    overrides = {
        "dataset": args.dataset,
        "n_trials": args.trials,
        "max_parallel": args.parallel,
        "sampler": args.sampler,
        "pruner": args.pruner,
        "name": args.name,
    }
    body.update({k: v for k, v in overrides.items() if v is not None})
    body.setdefault("name", args.spec.stem)
    return body


class TrialTable:
    """The study's trials as a table on stderr: redrawn in place on a terminal, else one line
    per trial as it ends."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream, self.tty = stream, stream.isatty()
        self.lines_drawn = 0
        self.told: set[int] = set()

    def update(self, study: Study) -> None:
        if self.tty:
            self._redraw(study)
            return
        for trial in study.trials:
            if trial.state != "running" and trial.number not in self.told:
                self.told.add(trial.number)
                print(self._row(study, trial.number), file=self.stream, flush=True)

    def _row(self, study: Study, number: int) -> str:
        trial = study.trials[number]
        best = " *" if study.best_trial and study.best_trial.number == number else ""
        value = "-" if trial.value is None else f"{trial.value:.4f}"
        params = " ".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in trial.params.items())
        return (
            f"trial {number:>3} {trial.state:<9} {study.objective['metric']} {value:>8} "
            f"epochs {trial.epochs_run:>4}  {params}{best}"
        )

    def _redraw(self, study: Study) -> None:
        lines = [self._row(study, t.number) for t in study.trials]
        lines.append(f"{len(study.trials)}/{study.n_trials} trials, study {study.status}")
        if self.lines_drawn:
            self.stream.write(f"\x1b[{self.lines_drawn}F\x1b[J")
        self.stream.write("\n".join(lines) + "\n")
        self.stream.flush()
        self.lines_drawn = len(lines)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _tune(args: argparse.Namespace) -> int:
    try:
        body = _study_body(args)
    except ValueError as exc:
        return _fail(str(exc), 2)
    table = TrialTable(sys.stderr)
    with _client(args) as client:
        try:
            if args.detach:
                print(client.create_study(body).id)
                return 0
            study = client.run_study(body, on_update=table.update)
        except FitserveError as exc:
            return _fail(str(exc))
        except KeyboardInterrupt:
            print("\nstopped following; the study goes on", file=sys.stderr)
            return 130
    best = study.best_trial
    if best is None or best.model_id is None:
        return _fail(f"study {study.id} {study.status} with no complete trial")
    registered = (
        f", registered as {study.register_as}@{study.registered_version}"
        if study.registered_version is not None
        else ""
    )
    print(
        f"study {study.id} {study.status}: best trial {best.number}, "
        f"{study.objective['metric']} {best.value:.4f}{registered}",
        file=sys.stderr,
    )
    print(best.model_id)
    return 0


def _metric_text(values: dict[str, Any]) -> str:
    names = ("loss", "accuracy", "mae", "val_loss", "val_accuracy", "val_mae")
    return " ".join(
        f"{name} {values[name]:.4f}" for name in names if isinstance(values.get(name), int | float)
    )


class Progress:
    """A per-epoch progress bar: redrawn in place on a terminal, one line per epoch otherwise."""

    def __init__(self, stream: IO[str], total: int | None) -> None:
        self.stream = stream
        self.total = total
        self.tty = stream.isatty()
        self.seconds: list[float] = []
        self.started = time.monotonic()
        self.drawn = False

    def status(self, data: dict[str, Any]) -> None:
        self.total = data.get("epochs") or self.total
        status = data.get("status")
        if status == "running" and not self.seconds:
            device = f" on {data['device']}" if data.get("device") else ""
            print(f"running{device}", file=self.stream, flush=True)

    def epoch(self, metrics: EpochMetrics) -> None:
        if metrics.seconds is not None:
            self.seconds.append(metrics.seconds)
        total = self.total or metrics.epoch
        done = min(metrics.epoch / total, 1.0) if total else 1.0
        filled = round(done * BAR_WIDTH)
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        line = f"epoch {metrics.epoch}/{total} [{bar}] {_metric_text(metrics.model_dump())}"
        if self.seconds and total > metrics.epoch:
            # Remaining epochs at the mean measured epoch time so far.
            eta = sum(self.seconds) / len(self.seconds) * (total - metrics.epoch)
            line += f" ETA {_duration(eta)}"
        if self.tty:
            self.stream.write("\r\x1b[2K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if self.tty and self.drawn:
            self.stream.write("\n")
            self.stream.flush()
        self.drawn = False


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


# --- jobs, datasets, predict ------------------------------------------------------------------


def _print_table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _job_row(job: Job) -> list[str]:
    progress = f"{job.epoch}/{job.epochs}" if job.epochs else str(job.epoch)
    loss = job.metrics.get("loss") if job.metrics else None
    return [
        job.id,
        job.status,
        progress,
        f"{loss:.4f}" if isinstance(loss, int | float) else "-",
        job.model_id or "-",
        job.name or "",
    ]


def _run(args: argparse.Namespace, action: Any) -> int:
    with _client(args) as client:
        try:
            action(client)
        except FitserveError as exc:
            return _fail(str(exc))
    return 0


def _jobs_list(args: argparse.Namespace) -> int:
    def action(client: FitserveClient) -> None:
        jobs = client.list_jobs(status=args.status)
        _print_table(
            [_job_row(job) for job in jobs], ["ID", "STATUS", "EPOCH", "LOSS", "MODEL", "NAME"]
        )

    return _run(args, action)


def _jobs_show(args: argparse.Namespace) -> int:
    def action(client: FitserveClient) -> None:
        job = client.get_job(args.job_id).model_dump(mode="json")
        job["history"] = [
            m.model_dump(mode="json", exclude_none=True) for m in client.metrics(args.job_id)
        ]
        print(json.dumps(job, indent=2))

    return _run(args, action)


def _jobs_cancel(args: argparse.Namespace) -> int:
    def action(client: FitserveClient) -> None:
        job = client.cancel(args.job_id)
        print(f"job {job.id} {job.status}", file=sys.stderr)

    return _run(args, action)


def _names_list(args: argparse.Namespace) -> int:
    def action(client: FitserveClient) -> None:
        for entry in client.list_names():
            aliases = " ".join(f"{a}={v}" for a, v in entry["aliases"].items())
            print(f"{entry['name']}\t{len(entry['versions'])} versions\t{aliases}")

    return _run(args, action)


def _names_show(args: argparse.Namespace) -> int:
    def action(client: FitserveClient) -> None:
        print(json.dumps(client.get_name(args.name), indent=2))

    return _run(args, action)


def _names_register(args: argparse.Namespace) -> int:
    def action(client: FitserveClient) -> None:
        version = client.register_model(args.name, args.model_id)
        print(f"{args.name} version {version['version']} is model {version['model_id']}",
              file=sys.stderr)  # fmt: skip
        print(version["version"])

    return _run(args, action)


def _names_alias(args: argparse.Namespace) -> int:
    def action(client: FitserveClient) -> None:
        client.set_alias(args.name, args.alias, args.version)
        print(f"{args.name}@{args.alias} -> version {args.version}", file=sys.stderr)

    return _run(args, action)


def _names_unalias(args: argparse.Namespace) -> int:
    def action(client: FitserveClient) -> None:
        client.delete_alias(args.name, args.alias)
        print(f"{args.name}@{args.alias} removed", file=sys.stderr)

    return _run(args, action)


def _datasets_upload(args: argparse.Namespace) -> int:
    if not args.file.is_file():
        return _fail(f"{args.file} is not a file", 2)

    def action(client: FitserveClient) -> None:
        dataset = client.upload_dataset(
            args.file, name=args.name, target=args.target, task=args.task
        )
        classes = f", {len(dataset.classes)} classes" if dataset.classes else ""
        print(
            f"dataset {dataset.name}: {dataset.rows} rows, {dataset.n_features} features, "
            f"{dataset.task}{classes}",
            file=sys.stderr,
        )
        print(dataset.id)

    return _run(args, action)


def _datasets_list(args: argparse.Namespace) -> int:
    def action(client: FitserveClient) -> None:
        rows = [
            [d.id, d.name, d.task, str(d.rows), str(d.n_features)] for d in client.list_datasets()
        ]
        _print_table(rows, ["ID", "NAME", "TASK", "ROWS", "FEATURES"])

    return _run(args, action)


def _predict(args: argparse.Namespace) -> int:
    if args.csv == "-":
        source: Any = sys.stdin.buffer
    else:
        source = Path(args.csv)
        if not source.is_file():
            return _fail(f"{args.csv} is not a file", 2)

    def action(client: FitserveClient) -> None:
        client.predict_csv(args.model_id, source, out=sys.stdout.buffer)
        sys.stdout.flush()

    return _run(args, action)


def main(argv: list[str] | None = None) -> int:
    """`fitserve-client`: the client subcommands without the server's."""
    parser = argparse.ArgumentParser(
        prog="fitserve-client", description="Train and predict on a fitserve server."
    )
    register(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
