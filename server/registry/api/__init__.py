"""REST API of the registry, under /api. Each module is one resource; every route names its roles."""

from fastapi import APIRouter

from . import admin, audits, nodes, runs, versions

router = APIRouter(prefix="/api")
for module in (runs, versions, nodes, audits, admin):
    router.include_router(module.router)
