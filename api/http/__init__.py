"""The HTTP service: app and lifespan resources, dependencies, routers, schemas, errors, middleware, metrics."""
