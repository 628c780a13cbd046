"""What a spliced SAE adds to the lake: its row in `saes` and its writes to the residual stream as weights
('<prefix>.to_residual' [d_sae, d_model], '<prefix>.bias_to_residual' [d_model]), and with `--input-weights all`
the encoder of an SAE on the residual stream ('autoencoder.to_latent' [d_model, d_sae], 'autoencoder.latent_bias'
[d_sae])."""

from __future__ import annotations

from collections.abc import Sequence

import duckdb
import pyarrow as pa
import torch

from ingest.errors import SAEError
from ingest.model import HookedTransformer
from ingest.sae.autoencoder import SparseAutoencoder
from warehouse import db
from warehouse.registry import AUTOENCODER_ENCODER_WEIGHTS, LOCATIONS
from warehouse.weights import weight_rows
from warehouse.writer import LakeWriter


def node_type(sae: SparseAutoencoder) -> str:
    return LOCATIONS[sae.site.latent].node_type.value


def check_distinct(saes: Sequence[SparseAutoencoder]) -> None:
    """Latents are keyed by node type and layer: two SAEs of one ingest may not share both."""
    seen: dict[tuple[str, int | None], str] = {}
    for sae in saes:
        key = (node_type(sae), sae.site.layer)
        if key in seen:
            raise SAEError(
                f"--sae {sae.path} and --sae {seen[key]} both give {key[0]} nodes at layer {key[1]}: "
                "ingest them into separate warehouses"
            )
        seen[key] = sae.path


def write_vectors(sae: SparseAutoencoder, model: HookedTransformer) -> tuple[torch.Tensor, torch.Tensor]:
    """([d_sae, d_model], [d_model]): what one unit of each latent, and the decoder bias, add to the
    residual stream, in float64 (the decoder mapped through W_out or W_O for SAEs on mlp.post_act or
    attn.v_out; the decoder itself on residual-stream sites)."""
    rows, bias = sae.decoder.double(), sae.b_dec.double()
    site = sae.site
    if site.location == "mlp.post_act":
        w_out = model.w("mlp.to_residual", site.layer).double()
        return rows @ w_out, bias @ w_out
    if site.location == "attn.v_out":
        w_o = model.w("attn.to_residual", site.layer).double()  # [heads, d_head, d_model]
        flat = w_o.reshape(-1, w_o.shape[-1])  # z is flattened head-major, as hook_z SAEs read it
        return rows @ flat, bias @ flat
    return rows, bias


def encoder_vectors(sae: SparseAutoencoder) -> tuple[torch.Tensor, torch.Tensor]:
    """([d_in, d_sae], [d_sae]) float64: W and b with f = x' W + b wherever a latent fires, x' the site's
    value (divided by its std + 1e-5 for an SAE that layer-normalises its input): the encoder with the
    decoder bias it subtracts folded into b, a gated SAE's magnitude path, a TopK SAE's decoder-norm
    rescaling, and, for a normalised input (mean zero), W's columns centred, so that x' W reads the raw
    site value's deviations alike (d f / d x = W / (std + 1e-5) with the std held)."""
    w, b = sae.w_enc.double(), sae.b_enc.double()
    if sae.architecture == "gated":
        assert sae.r_mag is not None and sae.b_mag is not None
        w, b = w * sae.r_mag.double().exp(), sae.b_mag.double()
    if sae.rescale_by_decoder_norm:
        norms = sae.w_dec.double().norm(dim=-1)
        w, b = w * norms, b * norms
    if sae.subtract_decoder_bias:
        b = b - sae.b_dec.double() @ w
    if sae.layer_norm_input:
        w = w - w.mean(dim=0, keepdim=True)
    return w, b


def encoder_rows(sae: SparseAutoencoder) -> list[tuple[str, pa.Table]]:
    """The weights (and weight_vectors) rows of a residual-stream SAE's encoder (AUTOENCODER_ENCODER_WEIGHTS);
    none for an SAE elsewhere (edges read latents through the residual stream only)."""
    if sae.site.weight_prefix != "autoencoder":
        return []
    w, b = encoder_vectors(sae)
    layer = sae.site.layer
    return [
        part
        for name, t in zip(AUTOENCODER_ENCODER_WEIGHTS, (w, b), strict=True)
        for part in weight_rows(name, layer, t.float().cpu().numpy())
    ]


def record_saes(
    writer: LakeWriter,
    model_id: int,
    saes: Sequence[SparseAutoencoder],
    model: HookedTransformer,
    input_weights: bool = False,
) -> None:
    """Store each SAE the lake does not hold yet (with its encoder where `input_weights`, also for an SAE
    stored before without it); SAEError when the lake holds another one for the same node type and layer
    (its latents' rows and weights would be indistinguishable)."""
    if not saes:
        return
    con = writer.con
    assert con is not None
    if not db.has_table(con, "saes"):  # a lake of this schema version written before the table existed
        raise SAEError(f"{writer.path} was created before actwh stored SAEs: ingest with --sae into a new --db")

    def new_rows(con: duckdb.DuckDBPyConnection) -> list[tuple[str, pa.Table]]:
        # read inside the writer's transaction: another worker may store the same SAE at the same time
        held = {
            (row[0], row[1]): (row[2], row[3])
            for row in con.execute(
                "SELECT node_type, layer, sha256, path FROM saes WHERE model_id = ?", [model_id]
            ).fetchall()
        }
        next_id = int(con.execute("SELECT coalesce(max(sae_id), -1) + 1 FROM saes").fetchall()[0][0])
        rows: list[tuple[str, pa.Table]] = []
        for sae in saes:
            key = (node_type(sae), sae.site.layer)
            if key in held:
                if held[key][0] != sae.sha256:
                    raise SAEError(
                        f"--sae {sae.path}: this warehouse already holds another SAE ({held[key][1]}) for "
                        f"{key[0]} nodes at layer {key[1]}: ingest into another --db"
                    )
                if input_weights and not _has_encoder(con, model_id, sae.site.layer):
                    rows += encoder_rows(sae)
                continue
            rows.append(("saes", _sae_row(sae, next_id)))
            next_id += 1
            if input_weights:
                rows += encoder_rows(sae)
            to_residual, bias = write_vectors(sae, model)
            prefix, layer = sae.site.weight_prefix, sae.site.layer
            rows += weight_rows(f"{prefix}.to_residual", layer, to_residual.float().cpu().numpy())
            rows += weight_rows(f"{prefix}.bias_to_residual", layer, bias.float().cpu().numpy())
        return rows

    writer.add_model_rows(model_id, new_rows)


def _has_encoder(con: duckdb.DuckDBPyConnection, model_id: int, layer: int | None) -> bool:
    held = con.execute(
        "SELECT count(*) FROM weights WHERE model_id = ? AND location = ? AND layer IS NOT DISTINCT FROM ?",
        [model_id, AUTOENCODER_ENCODER_WEIGHTS[0], layer],
    ).fetchall()
    return bool(held[0][0])


def _sae_row(sae: SparseAutoencoder, sae_id: int) -> pa.Table:
    site = sae.site
    return pa.table(
        {
            "sae_id": pa.array([sae_id], pa.int32()),
            "format": [sae.format],
            "architecture": [sae.architecture],
            "hook_name": [site.hook_name],
            "location": [site.location],
            "layer": pa.array([site.layer], pa.int16()),
            "node_type": [node_type(sae)],
            "latent_dst": [site.latent],
            "error_dst": [site.error],
            "d_in": pa.array([sae.d_in], pa.int32()),
            "d_sae": pa.array([sae.d_sae], pa.int32()),
            "k": pa.array([sae.k], pa.int32()),
            "sha256": [sae.sha256],
            "path": [sae.path],
        }
    )
