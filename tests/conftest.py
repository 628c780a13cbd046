"""Shared fixtures. No test may reach a model hub: transformers is told it is offline."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tests.postgres import pg_catalog, postgres_server  # noqa: E402, F401 - fixtures for shared-catalog tests
