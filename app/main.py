"""The FastAPI application: stores, model repository and dispatcher are created once per process."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app import __version__
from app.api.caller_gate import CallerGate
from app.api.docs import install_docs
from app.api.limits import BodySizeLimit
from app.api.main import api_router
from app.api.problems import install_problem_handlers
from app.api.recording import RequestRecorder
from app.api.redirects import RelativeRedirects
from app.api.waiting import FinishedJobWaiter
from app.config import Settings, get_settings
from app.dispatch import make_dispatcher
from app.dispatch.recovery import recover_periodically
from app.export.outbox import make_export_outbox
from app.export.policy import ExportPolicy
from app.export.scheduler import ExportScheduler
from app.retention import purge_periodically
from app.security.keys import KeyRing, load_keys
from app.security.rate_limit import RateLimiter
from app.storage.factory import make_blob_store, make_job_store, make_model_repository
from app.ui import ReviewPage

DESCRIPTION = """Medical-imaging inference: submit DICOM or PNG/JPEG inputs as jobs, read JSON results and
download masks and overlays. Reference models are for research use only."""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        app.state.settings = settings
        app.state.keyring = keyring
        app.state.rate_limiter = rate_limiter
        app.state.jobs = make_job_store(settings)
        app.state.waiter = FinishedJobWaiter(app.state.jobs, asyncio.get_running_loop())
        app.state.blobs = make_blob_store(settings)
        app.state.repository = make_model_repository(settings)
        app.state.dispatcher = make_dispatcher(settings, app.state.jobs, app.state.blobs)
        app.state.dispatcher.start()
        app.state.export_policy = export_policy
        app.state.exports = make_export_outbox(settings, app.state.jobs, app.state.blobs)
        app.state.export_scheduler = ExportScheduler(app.state.exports)
        app.state.export_scheduler.start()
        background = [
            asyncio.create_task(purge_periodically(app.state.jobs, app.state.blobs, settings)),
            asyncio.create_task(recover_periodically(app.state.dispatcher, app.state.jobs, settings)),
        ]
        try:
            yield
        finally:
            for task in background:
                task.cancel()
            app.state.waiter.close()
            app.state.export_scheduler.stop()
            app.state.dispatcher.stop()

    keys = load_keys(settings)  # a broken key file stops the start, not the first request
    keyring = KeyRing(keys)
    rate_limiter = RateLimiter(settings.rate_limit_per_minute)
    export_policy = ExportPolicy(settings, keys)
    app = FastAPI(title="medimg", version=__version__, description=DESCRIPTION, lifespan=lifespan,
                  docs_url=None, redoc_url=None)
    install_docs(app)
    install_problem_handlers(app)
    app.include_router(api_router)
    app.mount("/ui", ReviewPage(), name="ui")  # the review page: static files calling the API above
    # Outermost last. The caller is known (key, rate limit, scope) before the body limits read a byte.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes,
                       read_timeout=settings.body_read_timeout_seconds, deadline=settings.body_deadline_seconds,
                       min_bytes_per_second=settings.body_min_bytes_per_second)
    app.add_middleware(CallerGate, keyring=keyring, limiter=rate_limiter,
                       address_limiter=RateLimiter(settings.unauthenticated_rate_limit_per_minute))
    app.add_middleware(RelativeRedirects)
    app.add_middleware(RequestRecorder)  # outermost of ours: it also sees the 401/413s the others answer

    return app
