"""MongoDB storage: the client, the collections, their indexes and the repositories.

Only documented driver and server features are used, so the same code runs on
MongoDB 7+ and on the embedded SecantusDB. Every hot index starts with
``branch`` (the shard key in production).
"""

from api.store.database import Store, StoreTimeouts

__all__ = ["Store", "StoreTimeouts"]
