"""The `medimg` command: serve the gateway, run a Celery worker, predict one job in-process, check models.

`worker`, `predict` and `models check` import worker code lazily: they are separate entry points, not part of
the gateway, which stays free of ONNX Runtime. Task choices are the registered tasks (app/plugins).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from app.schemas.tasks import EXPORT_QUEUE, TaskName


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="medimg", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="Run the HTTP gateway (embedded worker pool unless MEDIMG_REDIS_URL)")
    serve.add_argument("--host", default=None, help="Bind address (default MEDIMG_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="Port (default MEDIMG_PORT or 8000)")

    listener = commands.add_parser("dicom-listener", help="Receive series by DIMSE C-STORE and queue their jobs")
    listener.add_argument("--host", default="127.0.0.1")
    listener.add_argument("--port", type=int, default=11112)
    listener.add_argument("--ae-title", default="MEDIMG")
    listener.add_argument("--task", choices=[t.value for t in TaskName], default=None,
                          help="Task for every series (default: MEDIMG_ROUTING_RULES decide)")

    commands.add_parser("new-key", help="Make an API key and print it with the sha256 to configure")

    worker = commands.add_parser("worker", help="Run a Celery worker (needs MEDIMG_REDIS_URL)")
    worker.add_argument("--queues", default=",".join([*(t.value for t in TaskName), EXPORT_QUEUE]),
                        help=f"Comma-separated task queues, and {EXPORT_QUEUE!r} for sending results to "
                        "MEDIMG_EXPORT_DESTINATIONS, to consume (default: all)")
    worker.add_argument("--concurrency", type=int, default=1, help="Jobs at once: processes or threads (default 1)")
    worker.add_argument("--pool", choices=["prefork", "threads"], default=None,
                        help="prefork (default, MEDIMG_WORKER_POOL): a process per job; threads: jobs share the "
                        "models and their inference is micro-batched")
    worker.add_argument("--loglevel", default="INFO")

    probe = commands.add_parser(
        "worker-probe", help="Exit 0 if this host's warmed worker beat recently (container liveness/readiness)"
    )
    probe.add_argument("--max-age", type=float, default=60.0,
                       help="Seconds since the last heartbeat (MEDIMG_WORKER_HEARTBEAT_FILE) still counted alive")

    predict = commands.add_parser("predict", help="Run one job in-process and print its result")
    predict.add_argument("--task", required=True, choices=[t.value for t in TaskName])
    predict.add_argument("files", nargs="+", type=Path)
    predict.add_argument("--options", default=None, help="JSON object of task options")
    predict.add_argument("--out", type=Path, default=None, help="Folder for the artifacts (default ./medimg-out/<job id>)")
    predict.add_argument("--no-progress", action="store_true")

    models = commands.add_parser("models", help="List the models that would be served, or check model folders")
    models_commands = models.add_subparsers(dest="models_command", required=True)
    models_list = models_commands.add_parser("list", help="Print what the model repository would serve, by task")
    models_list.add_argument("--repository", type=Path, default=None,
                             help="Model repository (default MEDIMG_MODEL_REPOSITORY)")
    models_check = models_commands.add_parser(
        "check", help="Check model version folders (manifest, sha256, graph, opset, one inference through decode)"
    )
    models_check.add_argument("folders", nargs="+", type=Path,
                              help="<model-id>/<version> folders, or a model repository to check all of")

    deploy = commands.add_parser("deploy-workers", help="Print the Kubernetes worker manifests, one per served task")
    deploy.add_argument("--template", type=Path, default=Path("deploy/templates/worker.yaml"))
    deploy.add_argument("--repository", type=Path, default=None,
                        help="Model repository whose served tasks get workers (default MEDIMG_MODEL_REPOSITORY)")

    evaluate = commands.add_parser(
        "eval", help="Run a labelled local data set through the service's pipeline and score it with 95 % intervals"
    )
    evaluate.add_argument("--task", required=True, choices=[t.value for t in TaskName])
    evaluate.add_argument("--out", type=Path, required=True, help="Folder for metrics.json, cases.csv, plots, "
                          "report.html and the per-case cache (a rerun continues from it)")
    evaluate.add_argument("--data", type=Path, help="Images, or one folder/ZIP of DICOM per series or case")
    evaluate.add_argument("--labels", type=Path, help="trainLabels.csv / train.csv (DR), annotations.csv (LUNA16), "
                          "the folder of masks (COVID), image,malignant CSV (thyroid)")
    evaluate.add_argument("--masks", type=Path, default=None, help="thyroid: folder of <image>.png nodule masks")
    evaluate.add_argument("--mask-label", action="append", default=[], metavar="NAME=V[,V]",
                          help="COVID: label values (NIfTI) or segment numbers (SEG) of lesion, ggo, consolidation, "
                          "lung; repeat per class (default lesion=1)")
    evaluate.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="Processes (default: all cores)")
    evaluate.add_argument("--bootstrap", type=int, default=2000, help="Bootstrap resamples (default 2000)")
    evaluate.add_argument("--seed", type=int, default=20261202, help="Bootstrap seed, recorded in metrics.json")
    evaluate.add_argument("--choose-operating-point", default=None, metavar="RULE",
                          help='e.g. "sensitivity>=0.975" or "specificity>=0.9": choose the threshold on this data '
                          "and write it to the site configuration the service loads (MEDIMG_SITE_CONFIG)")
    evaluate.add_argument("--site-name", default="site", help="Name of the chosen operating point (default site)")
    evaluate.add_argument("--site-config", type=Path, default=None,
                          help="Site configuration to write (default MEDIMG_SITE_CONFIG, else <out>/site-config.json)")
    evaluate.add_argument("--shadow", action="store_true",
                          help="Instead: report agreement between served and shadow results of finished jobs")
    evaluate.add_argument("--since", default=None, help="--shadow: jobs created at or after this ISO time")
    evaluate.add_argument("--no-progress", action="store_true")

    args = parser.parse_args(argv)
    os.umask(0o077)  # every file the service writes (inputs, results, job store) is its user's alone
    if args.command == "models":
        return _models(args)
    if args.command == "deploy-workers":
        return _deploy_workers(args)
    if args.command == "serve":
        return _serve(args)
    if args.command == "worker":
        return _worker(args)
    if args.command == "new-key":
        return _new_key()
    if args.command == "dicom-listener":
        return _dicom_listener(args)
    if args.command == "worker-probe":
        return _worker_probe(args)
    if args.command == "eval":
        return _eval(args, evaluate)
    return _predict(args)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.config import get_settings
    from app.logs import configure_logging
    from app.main import create_app
    from app.security.keys import is_loopback, load_keys

    configure_logging()
    settings = get_settings()
    host = args.host or settings.host
    port = args.port or settings.port
    if not is_loopback(host) and not load_keys(settings):
        print(f"medimg serve: refusing to listen on {host} without API keys; configure MEDIMG_API_KEYS or "
              "MEDIMG_API_KEYS_FILE (`medimg new-key` makes one), or bind to 127.0.0.1", file=sys.stderr)
        return 2
    # No uvicorn access log: the audit log (app/security/audit.py) already writes one line per request, with
    # the caller; a second line per request would only cost the event loop its formatting.
    uvicorn.run(create_app(settings), host=host, port=port, log_config=None, access_log=False, timeout_keep_alive=30)
    return 0


def _dicom_listener(args: argparse.Namespace) -> int:
    import signal
    import threading

    from app.config import get_settings
    from app.dimse.listener import SeriesCollector, make_listener_ae, tls_context
    from app.dispatch import make_dispatcher
    from app.export.outbox import make_export_outbox
    from app.export.scheduler import ExportScheduler
    from app.intake.service import Intake
    from app.logs import configure_logging
    from app.storage.factory import make_blob_store, make_job_store, make_model_repository

    from app.security.keys import is_loopback

    configure_logging()
    settings = get_settings()
    if not is_loopback(args.host) and not settings.dimse_peers:
        print(f"medimg dicom-listener: refusing to listen on {args.host} without known peers; list them in "
              'MEDIMG_DIMSE_PEERS ([{"ae_title", "address", "caller"}]), or bind to 127.0.0.1', file=sys.stderr)
        return 2
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    jobs, blobs = make_job_store(settings), make_blob_store(settings)
    dispatcher = make_dispatcher(settings, jobs, blobs)
    dispatcher.start()
    # Embedded, this process runs the jobs it queues, so it also sends their results (MEDIMG_EXPORT_DESTINATIONS).
    exports = ExportScheduler(make_export_outbox(settings, jobs, blobs))
    exports.start()
    intake = Intake(settings, make_model_repository(settings), jobs, blobs, dispatcher)
    collector = SeriesCollector(intake, settings, TaskName(args.task) if args.task else None)
    ae, handlers = make_listener_ae(collector, args.ae_title)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server = ae.start_server((args.host, args.port), block=False, evt_handlers=handlers,
                             ssl_context=tls_context(settings))
    print(f"medimg dicom-listener: {args.ae_title} listening on {args.host}:{args.port}", file=sys.stderr, flush=True)
    try:
        collector.run_timer(stop)
    finally:
        server.shutdown()
        collector.flush_quiet(now=float("inf"))  # series received before the stop are not lost
        dispatcher.stop()
        exports.stop()
    return 0


def _new_key() -> int:
    from app.security.keys import hash_key, new_key

    key = new_key()
    print(json.dumps({"key": key, "configure": {"name": "CHANGE-ME", "sha256": hash_key(key),
                                                "scopes": ["submit", "read"]}}, indent=2))
    return 0


def _worker(args: argparse.Namespace) -> int:
    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    unknown = sorted(set(queues) - {t.value for t in TaskName} - {EXPORT_QUEUE})
    if unknown:
        print(f"medimg worker: unknown queue(s) {unknown}; queues are task names: "
              f"{', '.join(t.value for t in TaskName)}, and {EXPORT_QUEUE}", file=sys.stderr)
        return 2
    # Worker processes read their queues from the settings after the fork.
    os.environ["MEDIMG_WORKER_QUEUES"] = json.dumps(queues)
    if args.pool:
        os.environ["MEDIMG_WORKER_POOL"] = args.pool
    from app.config import get_settings
    from app.logs import configure_logging

    get_settings.cache_clear()
    if not get_settings().redis_url:
        print("medimg worker: set MEDIMG_REDIS_URL (e.g. redis://127.0.0.1:6379/0)", file=sys.stderr)
        return 2
    configure_logging()
    from workers.metrics_endpoint import enable_multiprocess, serve_metrics

    enable_multiprocess(get_settings())  # before any metric is imported
    from workers.celery_app import celery_app

    serve_metrics(get_settings())
    exit_code = _run_celery_worker(celery_app, [
        "worker", "--queues", ",".join(queues), "--concurrency", str(args.concurrency),
        "--loglevel", args.loglevel, "--pool", get_settings().worker_pool, "--without-gossip", "--without-mingle",
        # A node name of its own even beside other workers on one host (RabbitMQ locks each node's pidbox queue).
        "--hostname", f"medimg-{os.getpid()}@%h",
    ])
    from workers.tasks import REFUSED_EXIT_CODE, worker_refused

    return REFUSED_EXIT_CODE if worker_refused() else exit_code


def _run_celery_worker(celery_app, argv: list[str]) -> int:
    """`celery_app.worker_main(argv)`, keeping the exit code it drops: a worker that stopped on an
    "Unrecoverable error" (a broker lost for good, say) must not exit 0, or an orchestrator restarting only
    failed containers, and the ops engineer reading its status, take the failure for a clean stop."""
    from celery.bin.celery import celery as celery_command

    celery_command.params[0].default = celery_app  # what Celery.start does before running its command
    try:
        return int(celery_command.main(args=argv, standalone_mode=False) or 0)
    finally:
        celery_command.params[0].default = None


def _worker_probe(args: argparse.Namespace) -> int:
    """Cheap on purpose (no Redis, no Celery): probes run every few seconds in every worker container."""
    from app.config import get_settings
    from app.storage.heartbeats import heartbeat_age

    path = get_settings().worker_heartbeat_file
    if path is None:
        print("medimg worker-probe: set MEDIMG_WORKER_HEARTBEAT_FILE (the worker touches it)", file=sys.stderr)
        return 2
    age = heartbeat_age(path)
    if age is None:
        print(f"medimg worker-probe: no heartbeat yet at {path} (models still warming up, or no worker)",
              file=sys.stderr)
        return 1
    if age > args.max_age:
        print(f"medimg worker-probe: last heartbeat {age:.0f}s ago (> {args.max_age:g}s) at {path}", file=sys.stderr)
        return 1
    print(f"ok: heartbeat {age:.1f}s ago")
    return 0


def _models(args: argparse.Namespace) -> int:
    if args.models_command == "list":
        from app.config import get_settings
        from app.model_repository import ModelRepository

        settings = get_settings()
        repository = ModelRepository(args.repository or settings.model_repository, settings.model_versions,
                                     settings.task_models)
        served = {m.manifest.task.value: m for m in repository.served()}
        for task in TaskName:
            model = served.get(task.value)
            where = f"{model.manifest.id}/{model.manifest.version} ({model.directory})" if model else "no model"
            print(f"{task.value:32} {where}")
        for model_id, error in sorted(repository.errors.items()):
            print(f"{'(not served)':32} {model_id}: {error}")
        return 0
    from workers.model_check import check_folders

    reports = check_folders(args.folders)
    for report in reports:
        print(report.render())
    return 0 if reports and all(r.passed for r in reports) else 1


def _deploy_workers(args: argparse.Namespace) -> int:
    from app.config import get_settings
    from app.deploy_manifests import render_workers, served_tasks
    from app.model_repository import ModelRepository

    settings = get_settings()
    repository = ModelRepository(args.repository or settings.model_repository, settings.model_versions,
                                 settings.task_models)
    sys.stdout.write(render_workers(args.template, served_tasks(repository)))
    return 0


def _eval(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Worker code (ONNX Runtime) imported only here, as for `predict`."""
    from app.config import get_settings

    settings = get_settings()
    if args.shadow:
        from workers.evaluation.shadow import shadow_report

        document = shadow_report(settings, TaskName(args.task), args.out, since=args.since)
        print(json.dumps(document["agreement"], indent=2))
        return 0
    if args.data is None or args.labels is None:
        parser.error("--data and --labels are needed (or --shadow)")
    from workers.evaluation.base import LabelOptions
    from workers.evaluation.files import LabelError
    from workers.evaluation.intervals import BootstrapSettings
    from workers.evaluation.operating_point import OperatingPointRule
    from workers.evaluation.run import EvalRequest, evaluate

    try:
        mask_labels = _mask_labels(args.mask_label)
        rule = OperatingPointRule.parse(args.choose_operating_point) if args.choose_operating_point else None
    except ValueError as exc:
        parser.error(str(exc))
    request = EvalRequest(
        task=TaskName(args.task),
        labels=LabelOptions(data=args.data, labels=args.labels, masks=args.masks, mask_labels=mask_labels),
        out=args.out, processes=max(1, args.jobs),
        bootstrap=BootstrapSettings(seed=args.seed, n_resamples=args.bootstrap),
        operating_point_rule=rule, site_name=args.site_name,
        site_config=args.site_config or settings.site_config, show_progress=not args.no_progress,
    )
    try:
        document = evaluate(settings, request)
    except (LabelError, ValueError) as exc:
        print(f"medimg eval: {exc}", file=sys.stderr)
        return 2
    summary = {name: figure for name, figure in document["metrics"].items()}
    print(json.dumps({"cases": document["cases"], "metrics": summary, "report": str(args.out / "report.html")},
                     indent=2))
    if "site_operating_point" in document:
        site = document["site_operating_point"]
        print(f"medimg eval: operating point {site['name']!r} at threshold {site['threshold']:g} written to "
              f"{site['written_to']}; serve it with MEDIMG_SITE_CONFIG={site['written_to']}", file=sys.stderr)
    return 0


def _mask_labels(items: list[str]) -> dict[str, tuple[int, ...]]:
    labels = {}
    for item in items:
        name, _, values = item.partition("=")
        try:
            labels[name.strip()] = tuple(int(v) for v in values.split(",") if v.strip())
        except ValueError:
            raise ValueError(f"--mask-label {item!r}: write NAME=V[,V], e.g. lesion=1 or lung=1,2") from None
        if not labels[name.strip()]:
            raise ValueError(f"--mask-label {item!r}: give at least one value")
    return labels


def _predict(args: argparse.Namespace) -> int:
    from app.config import get_settings
    from app.errors import MedimgError
    from app.schemas.jobs import JobPublic
    from workers.local import predict_files

    missing = [str(p) for p in args.files if not p.is_file()]
    if missing:
        print(f"medimg predict: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="medimg-predict-") as scratch:
        settings = get_settings().model_copy(update={"data_dir": Path(scratch), "redis_url": None})
        try:
            job, artifacts = predict_files(
                settings, TaskName(args.task), args.files, args.options, show_progress=not args.no_progress
            )
        except MedimgError as exc:
            print(json.dumps({"status": exc.status, "code": exc.code, "detail": exc.detail}, indent=2))
            return 1
        out = args.out or Path("medimg-out") / job.id
        out.mkdir(parents=True, exist_ok=True)
        for name, data in artifacts.items():
            (out / name).write_bytes(data)
    document = JobPublic.from_job(job).model_dump(mode="json")
    document["artifacts_dir"] = str(out)
    print(json.dumps(document, indent=2))
    return 0 if job.status.value == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
