"""REST API of the registry, under /api. Each module is one resource; every route names its roles.

`ROUTERS` is included by the app one level deep (FastAPI matches nested routers twice per request), the
most requested first."""

from . import admin, audits, nodes, runs, versions

ROUTERS = [runs.router, nodes.router, versions.router, audits.router, admin.router]
