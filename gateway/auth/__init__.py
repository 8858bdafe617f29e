"""Authentication: backends that turn an Authorization header into a Principal."""
