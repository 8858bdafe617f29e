"""The aiohttp application: app factory, keys, routes, middlewares, background checks."""
