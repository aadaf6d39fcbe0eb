"""Includes every router in one place."""

from fastapi import APIRouter

from app.api.routes import health, jobs, models

api_router = APIRouter()
api_router.include_router(jobs.router)
api_router.include_router(models.router)
api_router.include_router(health.router)
