"""The web dashboard: server-rendered pages (Jinja2) on the API listener, behind a login.

A front door like the API: each page reads and writes through the services the ``/api/v1`` routes use
(:mod:`relay.api.deps`), with the signed-in user's identity (their account, their role's scopes).
Everything it shows is served by Relay itself (no CDN, no web font); every form works without script.
"""
