"""dblocks.server.registry: the platform's record and the operators' control room.

A FastAPI application over SQLAlchemy (SQLite by default, PostgreSQL by `DBLOCKS_DATABASE_URL`) that keeps
runs, block versions with their privacy accounting, nodes, leakage audits and an append-only event log, plus
a content-addressed store for weight and artifact files. The federation server and the audit tool talk to it
only through `dblocks.shared.registry_client.RegistryClient`; operators use the dashboard or the REST API.
"""
