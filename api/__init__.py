"""The HTTP API: routes, schemas, auth, problem+json errors, uploads and downloads."""
