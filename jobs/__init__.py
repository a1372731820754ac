"""What the API and the worker share: settings, tables and repositories, the job state machine
(claim, heartbeat, fenced transitions), the artifact store and API-key hashing.

Imports sqlalchemy, alembic, pydantic and (for the S3 store) boto3 only: never fastapi, celery, torch,
matplotlib, `api`, `worker` or `kdcore` (tests/test_layers.py checks it).
"""
