"""The process around the app: serving, worker processes and their siblings, logging, Sentry."""
