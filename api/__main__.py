"""`python -m api`: serve the API with uvicorn on KD_API_HOST:KD_API_PORT."""

import uvicorn

from jobs.settings import settings

if __name__ == "__main__":
    uvicorn.run("api.app:create_app", factory=True, host=settings.api_host, port=settings.api_port,
                workers=settings.api_workers, log_level="info", proxy_headers=True)
