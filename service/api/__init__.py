"""HTTP routes, one module per concern; shared resources come from :mod:`service.api.deps`."""
