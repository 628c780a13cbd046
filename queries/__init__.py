"""Reading the warehouse: derived-scalar views (derived/*.sql) and the Python query API."""

from queries.api import Warehouse
from queries.node_scans import NodeStats
from queries.notes import notes
from queries.sources import DstNotAvailable, UnknownDst
from queries.streaming import QueryError

__all__ = ["DstNotAvailable", "NodeStats", "QueryError", "UnknownDst", "Warehouse", "notes"]
