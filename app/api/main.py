"""Includes every router in one place."""

from fastapi import APIRouter

from app.api.routes import dicomweb, exports, health, jobs, models
from app.schemas.problems import PROBLEM_MEDIA_TYPE, Problem

# Every error is a problem document; saying so once also replaces FastAPI's own 422 schema.
PROBLEMS = {
    "4XX": {"description": "Client error (RFC 9457 problem)", "model": Problem,
            "content": {PROBLEM_MEDIA_TYPE: {}}},
    "5XX": {"description": "Server error (RFC 9457 problem)", "model": Problem,
            "content": {PROBLEM_MEDIA_TYPE: {}}},
}

api_router = APIRouter(responses=PROBLEMS)
api_router.include_router(jobs.router)
api_router.include_router(models.router)
api_router.include_router(health.router)
api_router.include_router(dicomweb.router)
api_router.include_router(exports.router)
