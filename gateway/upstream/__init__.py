"""Talking to an upstream LRS: one target (storage or forwarding), the clients to it."""
