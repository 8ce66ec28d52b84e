"""The production store: MongoDB through pymongo's AsyncMongoClient."""

from adapters.mongo.store import InvalidMongoUri, MongoStore

__all__ = ["InvalidMongoUri", "MongoStore"]
