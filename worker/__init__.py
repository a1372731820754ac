"""The Celery worker: claims jobs, drives kdcore, writes progress through jobs/."""
