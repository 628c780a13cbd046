"""Reading the warehouse: derived-scalar views (derived/*.sql) and the Python query API."""

from queries.api import DstNotAvailable, NodeStats, QueryError, UnknownDst, Warehouse
from queries.notes import notes

__all__ = ["DstNotAvailable", "NodeStats", "QueryError", "UnknownDst", "Warehouse", "notes"]
