"""Services: what the API does, called by resolvers and routes with the caller's principal."""
