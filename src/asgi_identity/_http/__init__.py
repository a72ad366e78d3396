"""ASGI plumbing shared by every layer, with no policy: headers, the body, the request view."""
