"""/docs works without internet: the page loads Swagger UI from the app, never from a CDN (issue 15)."""

from __future__ import annotations

import re


def test_docs_page_loads_its_assets_from_the_app(client):
    page = client.get("/docs")
    assert page.status_code == 200
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']|url: ?["']([^"']+)["']""", page.text)
    urls = [u for pair in urls for u in pair if u]
    assert urls and not [u for u in urls if u.startswith(("http:", "https:", "//"))], urls
    for asset in ("/docs-assets/swagger-ui-bundle.js", "/docs-assets/swagger-ui.css"):
        assert asset in page.text
        response = client.get(asset)
        assert response.status_code == 200 and len(response.content) > 10_000
    assert client.get("/openapi.json").status_code == 200
