"""What the API and the worker share: settings, tables and repositories, the job state machine
(claim, heartbeat, fenced transitions), the artifact store and API-key hashing.

Imports sqlalchemy and pydantic only: never fastapi, celery, torch, `api`, `worker` or `kdcore`.
"""
