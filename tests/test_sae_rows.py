"""Sparse fact rows: a latent location yields rows only where its forward value is non-zero, and the
primer row the writer puts first is the first such row (none when a batch has no active latent)."""

from __future__ import annotations

import numpy as np

from ingest.capture import first_row, location_rows
from warehouse.registry import LOCATIONS

LATENTS = LOCATIONS["online_mlp_autoencoder_latent"]


def _rows(forward: np.ndarray, skip_first: bool = False) -> list[dict]:
    backward = np.arange(forward.size, dtype=np.float32).reshape(forward.shape)
    batches = location_rows(LATENTS, 2, forward, backward, np.array([3, 2]), np.array([7, 8]), skip_first=skip_first)
    return [row for batch in batches for row in batch.to_pylist()]


def test_rows_only_where_a_latent_is_non_zero_with_its_gradient() -> None:
    forward = np.zeros((2, 3, 5), np.float32)
    forward[0, 1, 4], forward[1, 0, 0], forward[1, 2, 1] = 2.0, -1.0, 3.0  # prompt 1 has 2 tokens: [1, 2] is padding
    rows = _rows(forward)
    assert [(r["prompt_id"], r["token"], r["node_index"], r["forward"], r["backward"]) for r in rows] == [
        (7, 1, 4, 2.0, 9.0),
        (8, 0, 0, -1.0, 15.0),
    ]
    assert {(r["layer"], r["node_type"], r["dst"]) for r in rows} == {
        (2, "mlp_autoencoder_latent", "online_mlp_autoencoder_latent")
    }
    backward = np.zeros_like(forward)
    primer = first_row(LATENTS, 2, forward, backward, np.array([3, 2]), np.array([7, 8])).to_pylist()
    assert [(r["prompt_id"], r["token"], r["node_index"]) for r in primer] == [(7, 1, 4)]
    assert _rows(forward, skip_first=True) == rows[1:]


def test_a_batch_without_an_active_latent_has_no_rows() -> None:
    forward = np.zeros((2, 3, 5), np.float32)
    assert _rows(forward) == [] and _rows(forward, skip_first=True) == []
    assert first_row(LATENTS, 2, forward, forward, np.array([3, 2]), np.array([7, 8])).num_rows == 0


def test_no_sae_error_stores_the_latents_alone(tmp_path) -> None:  # noqa: ANN001
    from tests.test_bad_input import tiny
    from tests.test_sae_bad_input import _sae
    from warehouse import db

    path = tmp_path / "wh"
    result = tiny(path, "--prompt", "Hello world, hello", "--sae", _sae(tmp_path, "a"), "--no-sae-error")
    assert result.returncode == 0, result.stderr
    con = db.connect(path, read_only=True)
    try:
        dsts = {r[0] for r in con.execute("SELECT DISTINCT dst FROM facts WHERE dst LIKE 'online%'").fetchall()}
        labels = con.execute("SELECT locations FROM runs").fetchall()[0][0]
    finally:
        con.close()
    assert dsts == {"online_autoencoder_latent"}
    assert {"online_autoencoder_latent:forward", "online_autoencoder_latent:backward"} <= set(labels)
    assert not any("error" in label for label in labels)
