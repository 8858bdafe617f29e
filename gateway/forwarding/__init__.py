"""Durable fan-out to forwarding LRSes: outbox store, its thread, one worker per target."""
