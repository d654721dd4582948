"""The HTTP surface: the GraphQL endpoint and the middleware in front of it."""
