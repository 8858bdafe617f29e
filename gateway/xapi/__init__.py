"""xAPI itself, pure: statements, agents, scopes, attachments, versions, validation."""
