"""The web admin at /admin/: server-rendered pages over the credential database."""
