"""The production store: MongoDB through pymongo's AsyncMongoClient."""

from adapters.mongo.store import MongoStore

__all__ = ["MongoStore"]
