"""Mutation check: every known kind of bug, injected into a scratch copy of the tree, must turn a test red.

    python bench/mutations.py                      # every mutation (about 11 minutes on 2 cores)
    python bench/mutations.py view_last_token_of_longest_prompt sigterm_handler_removed
    python bench/mutations.py --list
    python bench/mutations.py --markdown TESTING.md  # also rewrite the table there

A mutation is a few textual edits (file, old snippet, new snippet) plus the tests that should catch it.
For each one the tree (git's tracked files and untracked ones it does not ignore) is copied to a scratch
directory, the edits are applied there, and pytest runs those tests in the copy; its JUnit report says
which tests failed. An old snippet found zero times or more than once is an ERROR, never a kill: code
moved, so retarget the entry. The unmutated copy runs the same tests first and must pass, so a kill is
the mutation's doing. Exit status 0 when every mutation is killed, 1 when one survives or errs, 2 when
the unmutated tree fails its tests.

Add an entry for every bug fixed from now on: the bug as a small edit, and the tests that now catch it.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TABLE_START, TABLE_END = "<!-- mutations:start -->", "<!-- mutations:end -->"

PARITY = "tests/test_parity.py::test_every_location_matches_transformers"
VIEWS = "tests/test_views.py"
RELIABILITY = "tests/test_reliability.py"
LAKE = "tests/test_lake.py"
CONFIGS = "tests/test_model_configs.py"
ROPE_LAYOUTS = f"{CONFIGS}::test_rope_settings_read_from_either_layout"
CONFIG_READING = "tests/test_config_reading.py::test_our_reading_of_every_config_variant_is_transformers"
LAKE_ROW_GROUPS = f"{LAKE}::test_statistics_stay_true_when_a_batch_spans_several_row_groups"
WORKERS = "tests/test_workers.py"
WORKERS_KILLED = (
    f"{WORKERS}::test_a_killed_worker_rerun_beside_a_shard_started_twice_under_compaction_stores_every_prompt_once"
)
CONCURRENCY = "warehouse/concurrency.py"
WRITER = "warehouse/writer.py"
FACT_FILES = "warehouse/fact_files.py"
FACT_FILES_TESTS = "tests/test_fact_files.py"
FACT_FILES_STATISTICS = f"{FACT_FILES_TESTS}::test_statistics_equal_a_scan_after_writes_mixing_null_patterns"
FACT_FILES_RENUMBERED = f"{FACT_FILES_TESTS}::test_a_batch_renumbered_at_commit_is_stored_under_its_new_ids"
SAE = "tests/test_sae_capture.py"
SAE_LATENTS = f"{SAE}::test_latents_equal_each_formats_encoder_on_the_stored_site"
SAE_GRADIENTS = f"{SAE}::test_latent_and_error_gradients_equal_autograd_through_a_reference_splice"
SAE_VIEWS = "queries/support/50_autoencoders.sql"
SAE_CAPPED = "tests/test_sae_capped.py"
EMPTY = "tests/test_empty_answers.py"
TL_CACHE = "tests/test_tl_cache.py"
TL_CACHE_KEYS = f"{TL_CACHE}::test_every_key_and_gradient_equals_transformer_lens[gpt2]"
CACHE_WEIGHTS = "queries/cache_weights.py"
HOOK_NAMES = "warehouse/hook_names.py"
EDGES = "queries/support/60_edges.sql"
EDGE_TESTS = "tests/test_edges.py"
EDGE_ORACLE = "test_edges_into_an_mlp_neuron_match_the_oracle_prompt_by_prompt"
IDENTITY = "test_in_edge_activations_add_up_to_the_pre_activation_read"
SAE_READS = "queries/support/55_autoencoder_reads.sql"
SAE_SOURCES = "queries/support/61_autoencoder_sources.sql"
SAE_EDGE_ORACLE = "test_edges_into_an_sae_latent_match_the_oracle_prompt_by_prompt"
SAE_EDGE_IDENTITY = "test_in_edge_activations_add_up_to_the_latent_less_its_constant"
SAE_SOURCE_ORACLE = "test_sae_latents_as_sources_of_edges_into_an_mlp_neuron_match_the_oracle"
ATTN_EDGES = "queries/support/62_attention_edges.sql"
OUT_EDGES = "queries/support/63_out_edges.sql"
OUT_ORACLE = "tests/test_edges_from.py::test_edges_from_into_attention_sides_match_the_oracle"
OUT_READERS = "tests/test_edges_from.py::test_edges_from_are_the_edges_into_every_reader"
SAE_OUT = "tests/test_sae_edges_from.py::test_edges_out_of_an_sae_latent_match_the_oracle_and_edges_into"
SAE_READERS = "tests/test_sae_edges_from.py::test_edges_from_into_sae_latents_match_the_oracle_and_edges_into"
SAE_OUT_ATTN = (
    "tests/test_sae_edges_from.py::test_edges_out_of_an_sae_latent_into_attention_sides_match_the_oracle_and_edges_into"
)
VALUE_ORACLE = "tests/test_attention_edges.py::test_edges_into_a_value_side_match_the_oracle_prompt_by_prompt"
ATTN_OUT_ORACLE = "tests/test_attention_edges.py::test_edges_from_an_attention_node_and_the_embedding_match_the_oracle"
QK_ORACLE = "tests/test_attention_edges.py::test_edges_into_a_query_or_key_side_match_the_oracle_prompt_by_prompt"


def edges(model: str, *tests: str) -> tuple[str, ...]:
    """Edge tests on one of the edge warehouses ('gpt2', 'llama' or 'gemma2'); the oracle comparison by default."""
    return tuple(f"{EDGE_TESTS}::{test}[{model}]" for test in (tests or (EDGE_ORACLE,)))


def sae_edges(*tests: str, sae_set: str = "gated_topk_openai") -> tuple[str, ...]:
    """Tests of tests/test_sae_edges.py on one of its SAE sets."""
    return tuple(f"tests/test_sae_edges.py::{test}[{sae_set}]" for test in tests)


def parity(*cases: str, objective: str = "logit_diff") -> tuple[str, ...]:
    """The parity test on the named checkpoint cases (tests/test_parity.py CASES) for one objective."""
    return tuple(f"{PARITY}[{case}-{objective}]" for case in cases)


def views(model: str, *tests: str) -> tuple[str, ...]:
    """View tests on one of the view warehouses ('gpt2', 'llama' or 'gemma2'); the oracle comparison by default."""
    chosen = tests or ("test_every_derived_view_matches_the_oracle_prompt_by_prompt",)
    return tuple(f"{VIEWS}::{test}[{model}]" for test in chosen)


@dataclass(frozen=True)
class Edit:
    path: str
    old: str
    new: str


@dataclass(frozen=True)
class Mutation:
    name: str
    bug: str
    edits: tuple[Edit, ...]
    tests: tuple[str, ...]


def replace(path: str, old: str, new: str) -> tuple[Edit, ...]:
    return (Edit(path, old, new),)


def swap(path: str, a: str, b: str) -> tuple[Edit, ...]:
    """Two snippets exchanged (each must occur once): b's text goes where a was, via a placeholder."""
    marker = "\x00swapped\x00"
    return Edit(path, a, marker), Edit(path, b, a), Edit(path, marker, b)


FAMILIES = "ingest/families"
GPT2, LLAMA, ROPE = f"{FAMILIES}/gpt2.py", f"{FAMILIES}/llama.py", f"{FAMILIES}/rope.py"
MODEL = "ingest/model.py"
SUMMARIES = "ingest/summaries.py"
KERNELS = "ingest/summary_kernels.py"
BATCH = "ingest/summary_batch.py"
SUMMARY_TESTS = "tests/test_summaries.py"
MERGE = "warehouse/summary_merge.py"
MERGE_TESTS = "tests/test_summary_merge.py"
MERGE_TIES = tuple(
    f"tests/test_summary_merge_ties.py::test_a_merge_keeps_each_nodes_k_best_in_the_queries_order[{pool}]"
    for pool in ("known", "unknown", "superset")
)
STORE = "tests/test_store.py"
WORKER = "ingest/worker.py"
PASSES = "ingest/passes.py"
ROTARY = "    rotary = rotary_class(config)\n"  # transformers' rotary embedding built from the parsed config
HF_CONFIG = f"{FAMILIES}/hf_config.py"
WRITTEN = "json.dumps(dict(config))"  # the config.json transformers parses


def config_reading(*families: str) -> tuple[str, ...]:
    """The config-reading sweep (tests/test_config_reading.py) for the named families."""
    return tuple(f"{CONFIG_READING}[{family}]" for family in families)


GPT2_WEIGHTS = '    return w\n\n\nFAMILY = Family("gpt2"'
INTERRUPT = f"{RELIABILITY}::test_sigint_and_sigterm_mark_the_run_interrupted_and_resume"
INTERRUPTS = "warehouse/interrupts.py"
INTERRUPT_TESTS = "tests/test_interrupts.py"
STAGES = f"{INTERRUPT_TESTS}::test_ctrl_c_at_every_stage_of_an_ingest_gives_one_line_and_a_run_the_same_command_resumes"
PROMPTS = "ingest/prompts.py"
NOT_TEXT = "tests/test_bad_input.py::test_lines_that_are_not_text_are_skipped_and_the_others_stored"
CLOSED_FORM = "test_closed_form_final_residual_grad_equals_stored_gradient"
DECOMPOSE = "test_direct_effects_decompose_the_objective"
ORACLE = "test_every_derived_view_matches_the_oracle_prompt_by_prompt"
DIRECT = "queries/support/30_direct_effects.sql"
PAIRS_WEIGHTS = "queries/support/10_weight_factors.sql"
PAIRS = "queries/support/20_pairs.sql"
PLANS = "tests/test_direct_effect_plans.py"
GEMMA2_INGEST = "tests/test_checkpoints.py::test_gemma2_ingests_storing_its_post_block_norm_scales_by_default"
ROUNDTRIP = "tests/test_roundtrip.py"
READING = "commands/reading.py"
READING_OPTIONS = f"{SUMMARY_TESTS}::test_the_reading_commands_give_the_apis_answers_with_every_option"
PROMPT_KEYS = "tests/test_prompt_keys.py"
NODE = "ingest/node_objective.py"
NODE_TESTS = "tests/test_objective_node.py"
NODE_GRADIENT = (
    f"{NODE_TESTS}::test_the_stored_gradient_of_the_node_is_one_at_its_token_and_nothing_after_it_has_one[gpt2]"
)
NODE_VIEWS = f"{NODE_TESTS}::test_every_act_times_grad_view_agrees_with_autograd_through_transformers[gpt2]"

WEIGHT_VECTORS_MIGRATION = "test_a_version_7_lake_gets_the_weight_vectors_a_new_registration_writes"

MUTATIONS: tuple[Mutation, ...] = (
    Mutation(
        "tokens_position_not_renamed_by_the_migration",
        "a lake of schema version 4 keeps tokens.position after its upgrade, so joins on the shared `token` fail",
        replace("warehouse/db.py", '4: ("ALTER TABLE tokens RENAME COLUMN position TO token",),', "4: (),"),
        ("tests/test_migration.py::test_a_version_4_lake_names_the_token_column_as_activations_do_after_the_upgrade",),
    ),
    Mutation(
        "weight_vectors_of_a_reader_along_its_rows",
        "a reader's residual-stream vectors (mlp.to_hidden, W_Q, W_K, W_V) are stored as its rows, not its columns",
        replace("warehouse/weights.py", "array if axis == -1 else np.swapaxes(array, -1, -2)", "array"),
        (f"tests/test_migration.py::{WEIGHT_VECTORS_MIGRATION}",),
    ),
    Mutation(
        "weight_vectors_migration_reverses_the_channels",
        "the migration to version 8 lists each vector's values from the last residual channel to the first",
        replace("warehouse/db.py", "list(value ORDER BY {channel})", "list(value ORDER BY {channel} DESC)"),
        (f"tests/test_migration.py::{WEIGHT_VECTORS_MIGRATION}",),
    ),
    Mutation(
        "node_objective_negative_token_off_by_one",
        "--objective-node counts a negative token from one before the end: -1 traces the second-to-last token",
        replace(
            NODE,
            "position = given + n_tokens if given < 0 else given",
            "position = given + n_tokens - 1 if given < 0 else given",
        ),
        (NODE_GRADIENT, NODE_VIEWS),
    ),
    Mutation(
        "node_objective_sign_flipped",
        "the backward pass starts from minus the node's activation: every act-times-grad toward it has the wrong sign",
        replace(NODE, "return torch.stack(values)", "return -torch.stack(values)"),
        (NODE_GRADIENT, NODE_VIEWS),
    ),
    Mutation(
        "attention_node_objective_key_ignored",
        "an attention node as the objective reads the query's own key, not the key token given (@QUERY,KEY)",
        replace(
            NODE,
            "self.site[b, token, key, node.node_index] if node.pair",
            "self.site[b, token, token, node.node_index] if node.pair",
        ),
        (NODE_GRADIENT, NODE_VIEWS),
    ),
    Mutation(
        "node_objective_not_in_prompt_key",
        "a prompt stored with a logit or next-token objective counts as stored for a node objective (and the reverse)",
        replace(WORKER, '+ ([f"objective-node {node.label()}"] if node is not None else [])', "+ []"),
        (f"{NODE_TESTS}::test_a_node_objective_is_part_of_the_prompt_key",),
    ),
    Mutation(
        "unreached_gradients_left_out",
        "gradients after the objective node are left NULL instead of 0: their act-times-grad views have no rows",
        replace(
            "ingest/capture.py",
            "return {key: t.grad if t.grad is not None else torch.zeros_like(t) for key, t in self._grad_of.items()}",
            "return {key: t.grad for key, t in self._grad_of.items() if t.grad is not None}",
        ),
        (NODE_VIEWS,),
    ),
    Mutation(
        "objective_node_with_target_accepted",
        "--objective-node with --target runs the node objective and silently ignores the target",
        replace(NODE, "    if logit:\n", "    if False:\n"),
        (f"{NODE_TESTS}::test_bad_objective_nodes_are_refused_in_one_line",),
    ),
    Mutation(
        "objective_node_token_unchecked",
        "a node token out of a prompt's range is not skipped with a warning: the ingest fails with a traceback",
        replace(NODE, "    if not 0 <= position < n_tokens:\n", "    if False:\n"),
        (f"{NODE_TESTS}::test_prompts_the_node_cannot_be_placed_in_are_skipped",),
    ),
    Mutation(
        "objective_node_recorded_as_given",
        "prompts.objective_node records the token as given (@-1), not where the node is in that prompt",
        replace(PASSES, "p.node.label(p.place) if p.node", "p.node.label() if p.node"),
        (NODE_GRADIENT,),
    ),
    Mutation(
        "sae_latent_objective_without_encoder_path",
        "an SAE latent as the objective takes the stored latent only (computed from the site detached): nothing "
        "upstream of the SAE gets a gradient",
        replace(
            NODE,
            "values.append(latents[b, token, node.node_index] + (encoded - encoded.detach()))",
            "values.append(latents[b, token, node.node_index])",
        ),
        (f"{NODE_TESTS}::test_an_sae_latent_as_the_objective_agrees_with_autograd_through_its_encoder",),
    ),
    Mutation(
        "traced_prompt_direct_effect_unexplained",
        "the node table of a prompt traced from a node leaves its direct effects NULL without saying why",
        replace("queries/one_prompt.py", 'if col == "direct_effect" and traced is not None:', "if False:"),
        (f"{NODE_TESTS}::test_the_logit_only_views_say_so_in_one_line[gpt2]",),
    ),
    Mutation(
        "prompt_file_read_strictly",
        "one line of a prompt file that is not UTF-8 stops the ingest with a traceback, nothing stored",
        replace(PROMPTS, 'errors="surrogateescape"', 'errors="strict"'),
        (NOT_TEXT,),
    ),
    Mutation(
        "prompt_file_byte_order_mark_kept",
        "a byte-order mark stays in the first prompt, and turns a JSON line into a text prompt",
        replace(PROMPTS, '.rstrip("\\n").removeprefix(BOM)', '.rstrip("\\n")'),
        (NOT_TEXT,),
    ),
    Mutation(
        "json_unknown_field_ignored",
        "a JSON prompt line's field that is not prompt, target or distractor is silently ignored",
        replace(PROMPTS, "unknown = [key for key in record if key not in FIELDS]", "unknown: list[str] = []"),
        (NOT_TEXT,),
    ),
    Mutation(
        "prompt_text_unchecked",
        "a --prompt holding bytes that are not UTF-8 reaches the writer, which fails the run with a traceback",
        replace(WORKER, "problem = text_problem(source.text)", "problem = None"),
        (NOT_TEXT,),
    ),
    Mutation(
        "skipped_prompt_stored_as_is",
        "the run's list of skipped prompts holds a character that is not text, and recording the run fails",
        replace(PROMPTS, '"prompt": shown(self.text[:80])', '"prompt": self.text[:80]'),
        (NOT_TEXT,),
    ),
    Mutation(
        "utf16_prompt_file_read_as_utf8",
        "a prompt file saved as UTF-16 is read line by line as UTF-8 instead of refused in one line",
        replace(PROMPTS, 'and b"\\x00" in head', 'and b"\\x00" in head[:1]'),
        ("tests/test_bad_input.py::test_a_prompt_file_saved_as_utf16_is_refused_before_anything_runs",),
    ),
    Mutation(
        "target_text_unchecked",
        "a --target holding bytes that are not UTF-8 reaches the tokenizer, which fails with a traceback",
        replace("ingest/objective.py", "problem = text_problem(text)", "problem = None"),
        ("tests/test_bad_input.py::test_a_target_that_is_not_text_is_refused_in_one_line",),
    ),
    Mutation(
        "progress_log_counts_prompts_as_tokens",
        "the progress log's tokens and tokens/s count prompts: a long pass reports a rate far below its own",
        replace(
            WORKER,
            "progress.update(len(captured.items), sum(len(p.ids) for p in captured.items))",
            "progress.update(len(captured.items), len(captured.items))",
        ),
        ("tests/test_progress.py::test_the_log_holds_a_line_per_batch_and_the_totals_the_warehouse_holds",),
    ),
    Mutation(
        "api_interrupt_leaves_the_query_running",
        "Ctrl-C during a Python API query leaves DuckDB's threads running it: the next query waits for its end",
        replace(
            "queries/api.py",
            "                        con.interrupt()",
            "                        pass",
        ),
        (f"{INTERRUPT_TESTS}::test_ctrl_c_during_a_python_api_query_cancels_it",),
    ),
    Mutation(
        "library_interrupt_recorded_as_failure",
        "Ctrl-C landing inside DuckDB (its 'Query interrupted' RuntimeError) records the run as failed",
        replace(
            WORKER,
            "why = interrupts.reason(exc)",
            "why = interrupts.reason(exc) if isinstance(exc, KeyboardInterrupt) else None",
        ),
        (STAGES,),
    ),
    Mutation(
        "run_start_interruptible",
        "Ctrl-C while the run's row commits leaves the run 'running', its id unknown to the process",
        replace(
            WORKER,
            "with interrupts.deferred():  # a Ctrl-C while it commits",
            "with interrupts.raised():  # a Ctrl-C while it commits",
        ),
        (STAGES,),
    ),
    Mutation(
        "rope_theta_ignored",
        "the rotary embedding uses theta 10000 whatever the config says",
        replace(ROPE, ROTARY, '    config.rope_parameters["rope_theta"] = 10000.0\n' + ROTARY),
        (*parity("llama"), *config_reading("llama"), *views("llama")),
    ),
    Mutation(
        "gpt2_biases_zeroed",
        "GPT-2's attention and MLP biases read as zeros",
        replace(
            GPT2,
            GPT2_WEIGHTS,
            '    return {k: v * 0 if k[0].startswith(("attn.", "mlp.")) and k[0].endswith("_bias") else v'
            ' for k, v in w.items()}\n\n\nFAMILY = Family("gpt2"',
        ),
        (*parity("gpt2"), *views("gpt2")),
    ),
    Mutation(
        "gpt2_layernorm_gain_one_bias_zero",
        "GPT-2's LayerNorm gains read as 1 and biases as 0",
        replace(
            GPT2,
            GPT2_WEIGHTS,
            '    return {k: torch.ones_like(v) if k[0].startswith("layer_norm_gain") else torch.zeros_like(v)'
            ' if k[0].startswith("layer_norm_bias") else v for k, v in w.items()}\n\n\nFAMILY = Family("gpt2"',
        ),
        (*parity("gpt2"), *views("gpt2")),
    ),
    Mutation(
        "gpt2_query_key_biases_swapped",
        "GPT-2's query bias read from the key slice and the key bias from the query slice",
        swap(GPT2, "qkv_b[:d].reshape(h, dh)", "qkv_b[d : 2 * d].reshape(h, dh)"),
        (*parity("gpt2"), *views("gpt2")),
    ),
    Mutation(
        "llama_norm_gains_swapped",
        "Llama's input and post-attention norm gains exchanged",
        swap(LLAMA, 'gain(p + "input_layernorm.weight")', 'gain(p + layout.pre_mlp_norm + ".weight")'),
        (*parity("llama"), *views("llama")),
    ),
    Mutation(
        "llama_final_gain_one",
        "Llama's final norm gain read as 1",
        replace(
            LLAMA,
            '("layer_norm_gain.final", None): gain("norm.weight"),',
            '("layer_norm_gain.final", None): torch.ones_like(gain("norm.weight")),',
        ),
        (*parity("llama"), *views("llama")),
    ),
    Mutation(
        "gpt2_unembedding_from_embedding",
        "GPT-2's unembedding taken from the embedding even when the head is untied",
        replace(
            GPT2,
            'unembedding(reader, sd, embedding, "lm_head.weight")',
            'sd.drop("lm_head.weight") or embedding.T.contiguous()',
        ),
        (*parity("gpt2"), *views("gpt2")),
    ),
    Mutation(
        "llama_unembedding_from_embedding",
        "Llama's unembedding taken from the embedding even when the head is untied",
        replace(
            LLAMA,
            'unembedding(reader, sd, embedding, "lm_head.weight")',
            'sd.drop("lm_head.weight") or embedding.T.contiguous()',
        ),
        (*parity("llama"), *views("llama")),
    ),
    Mutation(
        "layer_not_captured",
        "the recorder keeps nothing of layer 1",
        replace(
            "ingest/capture.py",
            "if self.spec.wants(name, layer, PassType.FORWARD):",
            "if self.spec.wants(name, layer, PassType.FORWARD) and layer != 1:",
        ),
        (*parity("gpt2", "llama"), *views("gpt2")),
    ),
    Mutation(
        "view_last_token_of_longest_prompt",
        "direct effects take every prompt's last token as max(n_tokens) - 1",
        replace(
            "queries/support/20_pairs.sql",
            "(p.n_tokens - 1)::SMALLINT AS last_token",
            "((SELECT max(n_tokens) FROM prompts) - 1)::SMALLINT AS last_token",
        ),
        views("gpt2", ORACLE, DECOMPOSE),
    ),
    Mutation(
        "sigterm_handler_removed",
        "SIGTERM kills the ingest without recording the run as interrupted",
        replace(
            INTERRUPTS,
            "_SIGNALS = {signal.SIGINT: CTRL_C, signal.SIGTERM: SIGTERM}",
            "_SIGNALS = {signal.SIGINT: CTRL_C}",
        ),
        (INTERRUPT,),
    ),
    Mutation(
        "grouped_query_heads_tiled",
        "key/value heads shared as tiles (head h reads kv head h % H_kv) instead of in groups",
        (
            Edit(MODEL, "k_per_head = k.repeat_interleave(group, dim=2)", "k_per_head = k.repeat(1, 1, group, 1)"),
            Edit(MODEL, "v_per_head = v.repeat_interleave(group, dim=2)", "v_per_head = v.repeat(1, 1, group, 1)"),
        ),
        (*parity("llama"), *views("llama")),
    ),
    Mutation(
        "view_grouped_query_heads_tiled",
        "the attention direct-effect view maps query head h to kv head h % H_kv",
        replace(
            "queries/support/20_pairs.sql",
            "((head // (n_heads // n_kv_heads))::BIGINT << 12)",
            "((head % n_kv_heads)::BIGINT << 12)",
        ),
        views("llama", ORACLE, DECOMPOSE),
    ),
    Mutation(
        "view_layernorm_mean_not_removed",
        "the closed-form final-residual gradient of a pair given at query time skips LayerNorm's mean removal",
        replace(
            "queries/support/10_weight_factors.sql", "CASE WHEN m.norm = 'layernorm'", "CASE WHEN m.norm = 'rmsnorm'"
        ),
        views("gpt2", "test_factors_from_the_weights_equal_the_factors_stored_at_ingest"),
    ),
    Mutation(
        "final_scale_not_held",
        "the logit-difference backward pass lets gradient flow through the final norm's scale",
        replace(PASSES, "hold = items[0].kind == LOGIT_DIFF", "hold = False"),
        views("gpt2", ORACLE, CLOSED_FORM),
    ),
    Mutation(
        "next_token_loss_misaligned",
        "the next-token loss scores each position against its own token instead of the next",
        replace(
            "ingest/objective.py",
            "F.cross_entropy(logits[b, : n - 1], ids[b, 1:n])",
            "F.cross_entropy(logits[b, 1:n], ids[b, 1:n])",
        ),
        (*parity("gpt2", objective="next_token_ce"), *views("gpt2")),
    ),
    Mutation(
        "attn_norm_scale_stored_squared",
        "the stored scale of the norm before attention is the variance, not its square root",
        replace(
            MODEL, "hook(scale_name, layer, scale)", 'hook(scale_name, layer, scale**2 if block == "attn" else scale)'
        ),
        (*parity("gpt2"), *views("gpt2", "test_norm_scales_and_attention_logits_match_transformers")),
    ),
    Mutation(
        "wait_ignored",
        "--wait fails like a plain ingest instead of queueing",
        replace(
            WORKER,
            "LakeWriter(db_path, wait=options.wait, data_path=options.data_path)",
            "LakeWriter(db_path, wait=False, data_path=options.data_path)",
        ),
        (f"{RELIABILITY}::test_wait_queues_behind_a_running_ingest",),
    ),
    Mutation(
        "resume_stores_committed_prompts_again",
        "a rerun stores again the prompts already committed",
        replace(WORKER, "committed = set() if options.force else writer.committed_keys(model_id)", "committed = set()"),
        (f"{RELIABILITY}::test_sigkill_at_random_points_then_resume_stores_each_prompt_once_with_identical_values",),
    ),
    Mutation(
        "interrupt_recorded_as_failure",
        "Ctrl-C or SIGTERM records the run as failed, not interrupted",
        replace(WORKER, 'status, message = "interrupted", why', 'status, message = "failed", why'),
        (INTERRUPT, STAGES),
    ),
    Mutation(
        "fact_row_primer_removed",
        "a batch's fact files start without the primer row per location and layer, so the first file can"
        " be all NULL in a column (DuckLake 1.5.5 then drops the ranges of the transaction's later files)",
        (
            Edit(
                PASSES,
                "    if sources:\n        yield pa.concat_batches([first_row(*source) for source in sources])\n",
                "",
            ),
            Edit(PASSES, "location_rows(*source, skip_first=True)", "location_rows(*source)"),
        ),
        (LAKE_ROW_GROUPS,),
    ),
    Mutation(
        "fact_files_mix_null_patterns",
        "a batch's fact rows go to its files whatever their NULL patterns, so a file can hold row groups all"
        " NULL in a column beside row groups with values (DuckLake 1.5.5 then keeps no range for it)",
        replace(FACT_FILES, "for run in null_runs(batches):", "for run in [iter(batches)]:"),
        (LAKE_ROW_GROUPS, FACT_FILES_STATISTICS),
    ),
    Mutation(
        "fact_file_of_mixed_rows_cut_into_row_groups",
        "a record batch of mixed NULL patterns is written in row groups of the usual size, so a column can be"
        " all NULL in some of its file's row groups and valued in others",
        replace(
            FACT_FILES,
            "writer.write_batch(batch, row_group_size=max(batch.num_rows, 1))",
            "writer.write_batch(batch, row_group_size=ROWS_PER_ROW_GROUP)",
        ),
        (FACT_FILES_STATISTICS,),
    ),
    Mutation(
        "fact_files_registered_outside_the_batch_transaction",
        "a batch's fact files are registered in a transaction of their own (a second cursor), so an ingest"
        " killed before its commit leaves rows of prompts no reader sees",
        replace(
            WRITER,
            "con.execute(f\"CALL ducklake_add_data_files('{ALIAS}', 'facts', ?)\", [str(path)])",
            "self._con.cursor().execute(f\"CALL ducklake_add_data_files('{ALIAS}', 'facts', ?)\", [str(path)])",
        ),
        (f"{FACT_FILES_TESTS}::test_a_killed_ingest_leaves_no_partial_prompt_and_no_orphan[registered]",),
    ),
    Mutation(
        "killed_ingest_orphan_files_kept",
        "the writer opening a folder no longer deletes the files a killed ingest wrote and never registered",
        replace(
            WRITER,
            'self._con.execute("CALL ducklake_delete_orphaned_files(current_database(), cleanup_all => true)")',
            "pass",
        ),
        (f"{FACT_FILES_TESTS}::test_a_killed_ingest_leaves_no_partial_prompt_and_no_orphan",),
    ),
    Mutation(
        "unregistered_fact_files_kept",
        "files no committed transaction registered (a commit lost, or a batch rewritten under new prompt ids)"
        " stay on disk",
        replace(WRITER, "                files.delete(keep)", "                pass"),
        (FACT_FILES_RENUMBERED,),
    ),
    Mutation(
        "fact_file_disk_full_not_translated",
        "a full disk while a batch's fact files are written (before its transaction) ends in a traceback",
        replace(
            WRITER,
            "        with self._translate_disk_full():  # the files are written before any transaction\n"
            "            written = pool.write(batch.facts)\n",
            "        written = pool.write(batch.facts)\n",
        ),
        ("tests/test_bad_input.py::test_disk_full_during_a_commit[fact file]",),
    ),
    Mutation(
        "renumbered_fact_files_registered_unchanged",
        "fact files written under provisional prompt ids are registered as they are when the commit"
        " renumbers the batch's prompts",
        replace(WRITER, "if not renumbering.identity:", "if False:"),
        (FACT_FILES_RENUMBERED,),
    ),
    Mutation(
        "fact_primer_inlined",
        "the facts table keeps DuckLake's data inlining, so a primer of up to 10 rows becomes catalog rows"
        " and the first file of a batch can be all NULL in a column",
        replace(
            "warehouse/lake.py",
            'FILE_ONLY_TABLES = ("facts", "weights", "weight_vectors", "direction_factors")',
            "FILE_ONLY_TABLES = ()",
        ),
        (LAKE_ROW_GROUPS,),
    ),
    Mutation(
        "convert_files_mix_null_patterns",
        "converting a single-file warehouse copies its facts in one INSERT, so a file can mix all-NULL and"
        " valued row groups in a column",
        (
            Edit(
                "warehouse/lake.py",
                'for pattern in con.execute(f"SELECT DISTINCT {is_null} FROM ({query})").fetchall():',
                "for pattern in [()]:",
            ),
            Edit(
                "warehouse/lake.py",
                "WHERE primer_rank > 1 AND {' AND '.join(tests)} ORDER BY",
                "WHERE primer_rank > 1 ORDER BY",
            ),
        ),
        (f"{LAKE}::test_a_converted_warehouse_of_several_row_groups_keeps_true_statistics",),
    ),
    Mutation(
        "failed_commit_masked_by_rollback",
        "a failed COMMIT is followed by a ROLLBACK whose 'no transaction is active' error replaces the commit's",
        replace(
            "warehouse/writer.py",
            'with suppress(duckdb.Error):\n                    con.execute("ROLLBACK")',
            'con.execute("ROLLBACK")',
        ),
        (f"{LAKE}::test_a_failed_commit_reports_its_own_error",),
    ),
    Mutation(
        "direct_effects_missing_unembedding_silent",
        "direct_effects for a token whose unembedding column is not stored returns no rows instead of raising",
        replace(
            "queries/support/10_weight_factors.sql",
            "    WHEN t IS NOT NULL AND NOT EXISTS (SELECT 1 FROM weights WHERE location = 'unembedding'"
            " AND col_index = t)\n"
            "        THEN unembedding_missing(t)\n",
            "",
        ),
        views("gpt2", "test_direct_effects_for_a_token_without_an_unembedding_column_is_an_error"),
    ),
    Mutation(
        "pair_check_skipped_by_a_pushed_filter",
        "direct_effects' refusal branch has constant columns and neither the pairs nor the unembedding directions join"
        " the check: WHERE prompt_id = 0 on a pair without an unembedding column proves the branch empty: 0 rows",
        (
            *replace(
                "queries/support/20_pairs.sql",
                "    CROSS JOIN checked_pair(t, d) c\n    WHERE coalesce(c.target_id, p.target_id) IS NOT NULL\n",
                "    CROSS JOIN (SELECT t AS target_id, d AS distractor_id) c\n"
                "    WHERE coalesce(c.target_id, p.target_id) IS NOT NULL\n",
            ),
            *replace(
                "queries/support/10_weight_factors.sql",
                "SELECT e::INTEGER AS prompt_id, e::SMALLINT AS token, e::SMALLINT AS token2, e::SMALLINT AS layer,\n"
                "       e::SMALLINT AS head, e::VARCHAR AS node_type, e::INTEGER AS node_index, e::VARCHAR AS dst,\n"
                "       e::VARCHAR AS pass_type, e::FLOAT AS value\n"
                "FROM (SELECT error(problem) AS e FROM pair_problem(t, d) WHERE problem IS NOT NULL);",
                "SELECT NULL::INTEGER AS prompt_id, NULL::SMALLINT AS token, NULL::SMALLINT AS token2,"
                " NULL::SMALLINT AS layer,\n       NULL::SMALLINT AS head, NULL::VARCHAR AS node_type,"
                " NULL::INTEGER AS node_index, NULL::VARCHAR AS dst,\n       NULL::VARCHAR AS pass_type,"
                " NULL::FLOAT AS value\nFROM (SELECT error(problem) AS e FROM pair_problem(t, d)"
                " WHERE problem IS NOT NULL);",
            ),
            *replace(
                "queries/support/10_weight_factors.sql",
                "FROM (SELECT target_id AS token_id FROM checked_pair(t, d) UNION ALL SELECT distractor_id FROM"
                " checked_pair(t, d)) v",
                "FROM (SELECT t AS token_id UNION ALL SELECT d) v",
            ),
        ),
        (f"{EMPTY}::test_a_pair_without_an_unembedding_column_raises_under_every_filter",),
    ),
    Mutation(
        "same_token_pair_answered_at_query_time",
        "direct_effects(t, t) answers (an objective identically 0, every MLP row repeated) instead of refusing",
        replace(
            "queries/support/10_weight_factors.sql",
            "    WHEN t = d THEN 'target and distractor are the same token '",
            "    WHEN false THEN 'target and distractor are the same token '",
        ),
        (f"{EMPTY}::test_a_target_equal_to_its_distractor_is_refused_at_query_time",),
    ),
    Mutation(
        "same_token_pair_ingested",
        "ingest stores prompts whose target equals their distractor (the objective is 0 for every input)",
        (
            *replace(
                "ingest/worker.py",
                'if options.distractor is not None and ids["--target"] == ids["--distractor"]:',
                "if False:",
            ),
            *replace("ingest/worker.py", "if distractor_id is not None and distractor_id == target_id:", "if False:"),
        ),
        (f"{EMPTY}::test_ingest_refuses_a_target_equal_to_its_distractor",),
    ),
    Mutation(
        "layer_not_stored_answered_empty",
        "examples/rank/node-stats of a layer the ingest left out (--layers) answer an empty table",
        replace("queries/absence.py", "if layer is not None and not _any_row(", "if False and not _any_row("),
        (f"{EMPTY}::test_a_layer_not_stored_is_named_not_answered_empty",),
    ),
    Mutation(
        "pass_not_stored_answered_empty",
        "a dst, pass or derived view whose rows were never stored answers an empty table instead of saying so",
        replace("queries/absence.py", "    if not _any_row(con, relation, where, params):", "    if False:"),
        (
            f"{EMPTY}::test_a_pass_or_input_not_stored_is_named_not_answered_empty",
            f"{EMPTY}::test_every_view_and_table_macro_answers_or_says_why[layer1]",
        ),
    ),
    Mutation(
        "bfloat16_truncated",
        "bfloat16 storage truncates the low 16 bits instead of rounding to nearest, ties to even",
        replace(
            "warehouse/facts.py",
            "((bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000))",
            "(bits & np.uint32(0xFFFF0000))",
        ),
        (f"{LAKE}::test_bfloat16_precision_rounds_each_value_to_nearest_even",),
    ),
    Mutation(
        "direction_factors_mean_not_removed",
        "the ingest's direction factors skip the mean removal of LayerNorm models",
        replace("ingest/factors.py", "u = u - u.mean()", "u = u"),
        views("gpt2", ORACLE, DECOMPOSE),
    ),
    Mutation(
        "act_times_grad_forward_squared",
        "act_times_grad multiplies the forward value by itself instead of by the gradient",
        replace("queries/support/40_shapes.sql", "(forward * backward)::FLOAT", "(forward * forward)::FLOAT"),
        (*views("gpt2", "test_act_times_grad_from_residual_gradients"), "tests/test_view_paths.py"),
    ),
    Mutation(
        "rope_theta_top_level_only",
        "rope_theta read only from the top-level config key, not from rope_parameters (transformers 5's layout)",
        replace(
            HF_CONFIG,
            WRITTEN,
            'json.dumps({**config, "rope_parameters": {k: v for k, v in (config.get("rope_parameters") or {}).items()'
            ' if k != "rope_theta"} or None})',
        ),
        (*parity("llama", "llama-rope-llama3"), ROPE_LAYOUTS),
    ),
    Mutation(
        "rope_scaling_ignored",
        "a rope scaling (linear, llama3, yarn) read as the default rotary",
        replace(
            ROPE,
            ROTARY,
            ROTARY + "    rotary.inv_freq, rotary.attention_scaling = rotary.compute_default_rope_parameters(config)\n",
        ),
        (*parity("llama-rope-linear", "llama-rope-llama3", "llama-rope-yarn"), *config_reading("llama")),
    ),
    Mutation(
        "partial_rotary_ignored",
        "every channel of a head rotates, whatever partial_rotary_factor (GPT-NeoX's rotary_pct) says",
        replace(ROPE, ROTARY, '    config.rope_parameters["partial_rotary_factor"] = 1.0\n' + ROTARY),
        (*parity("gpt_neox"), f"{CONFIGS}::test_gpt_neox_reads_its_legacy_rotary_fields", *config_reading("gpt_neox")),
    ),
    Mutation(
        "partial_rotary_read_where_the_model_ignores_it",
        "a Llama-style family rotates only partial_rotary_factor of each head, with frequencies for that part,"
        " where transformers' model (whose default rope never reads the factor) rotates the whole head",
        (
            Edit(
                ROPE,
                'rotary_class = getattr(module, type(config).__name__.removesuffix("Config") + "RotaryEmbedding")',
                'rotary_class = importlib.import_module("transformers.models.gpt_neox.modeling_gpt_neox")'
                ".GPTNeoXRotaryEmbedding",
            ),
            Edit(LLAMA, "rope.read_rope(reader, d_head, leading_rotary)", "rope.read_rope(reader, d_head, True)"),
        ),
        (*parity("llama-partial_rotary_factor-ignored"), *config_reading("llama", "mistral", "olmo2")),
    ),
    Mutation(
        "olmo2_eps_default_of_our_own",
        "an OLMo 2 config.json without rms_norm_eps read with an epsilon of our own (1e-6), not its config"
        " class's default (1e-5)",
        replace(
            HF_CONFIG,
            WRITTEN,
            'json.dumps({"rms_norm_eps": 1e-6, **config} if config.get("model_type") == "olmo2" else dict(config))',
        ),
        (*parity("olmo2-eps-absent-small-embedding"), *config_reading("olmo2")),
    ),
    Mutation(
        "is_causal_false_accepted",
        "a config with is_causal: false (transformers' mask then attends both ways) accepted as causal",
        replace(f"{FAMILIES}/fields.py", '    "is_causal": only(True),\n', ""),
        (f"{CONFIGS}::test_a_bidirectional_config_is_refused",),
    ),
    Mutation(
        "norm_eps_dropped",
        "the norms before and after the blocks and the final norm divide by the root mean square without the"
        " config's epsilon",
        replace(
            MODEL,
            "scale = torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + self.config.norm_eps)",
            "scale = torch.sqrt(centred.pow(2).mean(-1, keepdim=True))",
        ),
        parity("gpt2", "llama", "gpt_neox"),
    ),
    Mutation(
        "rope_layout_precedence_of_our_own",
        "a config carrying both rope layouts read with rope_parameters first, where transformers lets a legacy"
        " rope_scaling win",
        replace(
            HF_CONFIG,
            WRITTEN,
            'json.dumps({k: v for k, v in config.items() if k != "rope_scaling" or not config.get("rope_parameters")})',
        ),
        config_reading("llama", "qwen2"),
    ),
    Mutation(
        "head_dim_default_of_our_own",
        "the head size taken as d_model / heads, not the config's head_dim (Gemma's class default is 256)",
        replace(LLAMA, 'd_head = int(reader.get("head_dim") or d_model // n_heads)', "d_head = d_model // n_heads"),
        (*config_reading("gemma", "qwen3"), *parity("llama-biases-head_dim-tied")),
    ),
    Mutation(
        "parallel_residual_ignored",
        "the MLP reads the residual after attention even in a parallel-residual model (GPT-NeoX)",
        replace(
            MODEL, "self._mlp(x if cfg.parallel_residual else x_attn, layer, hook)", "self._mlp(x_attn, layer, hook)"
        ),
        parity("gpt_neox"),
    ),
    Mutation(
        "gemma_gain_offset_ignored",
        "Gemma's norm gains applied as the stored w instead of 1 + w",
        replace(LLAMA, "return sd.take(name) + layout.gain_offset", "return sd.take(name)"),
        parity("gemma", "gemma2"),
    ),
    Mutation(
        "embedding_scale_ignored",
        "the embedding is not multiplied by the model's embedding scale (Gemma's sqrt(d_model))",
        replace(MODEL, "if cfg.embedding_scale != 1.0:", "if False:"),
        parity("gemma", "gemma2"),
    ),
    Mutation(
        "sliding_window_ignored",
        "every layer attends to all earlier tokens, whatever the sliding window (Mistral, Qwen2, Gemma 2)",
        replace(MODEL, "if cfg.window(layer) is not None:", "if False:"),
        parity("mistral", "qwen2", "gemma2"),
    ),
    Mutation(
        "commits_not_serialized",
        "writers on a shared catalog commit side by side, each numbering its prompts from what it last saw",
        replace(
            CONCURRENCY,
            '    con.execute(\n        "UPDATE meta SET value',
            '    (lambda *_: None)(\n        "UPDATE meta SET value',
        ),
        (f"{WORKERS}::test_four_workers_store_every_prompt_once_with_one_workers_values", WORKERS_KILLED),
    ),
    Mutation(
        "duplicate_prompts_stored",
        "a commit does not leave out prompts another writer stored since the batch was captured",
        replace(CONCURRENCY, "stored = stored_keys(con, keys.combine_chunks()) if unique else set()", "stored = set()"),
        (WORKERS_KILLED,),
    ),
    Mutation(
        "live_run_marked_interrupted",
        "a writer opening a shared catalog marks every running run interrupted, live workers' too",
        replace(WRITER, "if not self.shared or concurrency.owner_is_gone(message)", "if True"),
        (WORKERS_KILLED,),
    ),
    Mutation(
        "shards_overlap",
        "--shard I/N takes every N-th prompt from the first, whatever I",
        replace("ingest/workers.py", "if position % count == index - 1:", "if position % count == 0:"),
        (f"{WORKERS}::test_shards_split_deterministically",),
    ),
    Mutation(
        "model_rows_added_unserialized",
        "rows added to a registered model (an SAE's) commit beside another writer's, decided on a stale read",
        replace(
            WRITER, "if tagged:\n                    concurrency.serialize(con)", "if tagged:\n                    pass"
        ),
        (
            "tests/test_shared_catalog.py::"
            "test_model_rows_added_after_registration_are_decided_again_after_a_lost_conflict",
        ),
    ),
    Mutation(
        "summaries_kept_for_dropped_prompts",
        "a batch that lost prompts to another writer stores summaries counting them (twice, with the winner's)",
        replace(WRITER, "if run_id in self._unsummarised or renumbering.kept < batch.prompts.num_rows:", "if False:"),
        ("tests/test_shared_catalog.py::test_a_batch_that_loses_prompts_to_another_writer_leaves_its_run_to_a_scan",),
    ),
    Mutation(
        "token_text_replacement_characters",
        "token display texts decode each token alone, writing U+FFFD for a character split across tokens",
        replace(
            "warehouse/token_text.py",
            'return [piece.decode("utf-8") for piece in pieces]',
            'return [piece.decode("utf-8", errors="replace") for piece in pieces]',
        ),
        ("tests/test_token_bytes.py",),
    ),
    Mutation(
        "example_context_from_token_texts",
        "example contexts join the tokens' display texts, so split characters read as escapes",
        replace(
            "queries/contexts.py",
            "list(coalesce(t.bytes, encode(t.text)) ORDER BY t.token)",
            "list(encode(t.text) ORDER BY t.token)",
        ),
        ("tests/test_token_bytes.py::test_ingested_tokens_and_example_contexts",),
    ),
    Mutation(
        "sql_result_materialised",
        "actwh sql and Warehouse.sql_reader hold the whole result before the first batch is written",
        replace(
            "queries/streaming.py",
            "source = con.execute(query, params).to_arrow_reader(batch_size)",
            "source = pa.RecordBatchReader.from_batches(*(lambda t: (t.schema, t.to_batches(batch_size)))"
            "(con.execute(query, params).to_arrow_table()))",
        ),
        (
            "tests/test_sql_streaming.py::test_attention_probabilities_of_a_long_prompt_stream_in_bounded_memory",
            "tests/test_sql_streaming.py::test_api_reader_streams_in_bounded_memory",
        ),
    ),
    Mutation(
        "duckdb_progress_bar_on_stdout",
        "DuckDB's progress bar is left on: a query over 2 s draws it into the caller's stdout",
        replace("warehouse/lake.py", 'con.execute("SET enable_progress_bar = false")', "pass"),
        ("tests/test_sql_streaming.py::test_api_reader_streams_in_bounded_memory",),
    ),
    Mutation(
        "example_window_pair_values_by_key",
        "example strips of a token-pair dst shade each position by its own query row, not the example's",
        replace(
            "queries/contexts.py",
            '" ELSE v.token = h.token AND v.token2 = t.token END"',
            '" ELSE v.token = t.token AND v.token2 = h.token2 END"',
        ),
        ("tests/test_plots.py::test_example_windows_hold_the_stored_values",),
    ),
    Mutation(
        "sae_hash_ignores_config",
        "an SAE is identified by its weights file alone: the same weights with another config (architecture, k, "
        "decoder-bias subtraction) pass for the SAE a warehouse already holds",
        replace("ingest/sae/load.py", "[weights_file, cfg_path] if fmt", "[weights_file] if fmt"),
        ("tests/test_sae_bad_input.py::test_another_sae_at_the_same_place_is_refused_in_a_later_ingest",),
    ),
    Mutation(
        "sae_splice_gives_latents_no_gradient",
        "the splice passes the site's gradient upstream but not to the reconstruction and error",
        replace("ingest/sae/splice.py", "return (grad,) * (1 + ctx.n_paths)", "return (grad, *(None,) * ctx.n_paths)"),
        (SAE_GRADIENTS,),
    ),
    Mutation(
        "sae_latents_stored_dense",
        "latent rows stored for every latent, zeros included",
        replace("ingest/capture.py", "if loc.sparse and blocks[0] is not None:", "if False:"),
        (SAE_LATENTS,),
    ),
    Mutation(
        "sae_topk_decoder_not_renormalised",
        "a topk SAE that rescales by decoder norms decodes with the raw decoder rows",
        replace(
            "ingest/sae/autoencoder.py",
            "        if self.rescale_by_decoder_norm:\n            return",
            "        if False:\n            return",
        ),
        (SAE_GRADIENTS, f"{SAE}::test_latent_views_equal_the_oracle"),
    ),
    Mutation(
        "sparsify_decoder_bias_not_subtracted",
        "sparsify SAEs encode x instead of x - b_dec",
        replace("ingest/sae/sparsify.py", '"subtract_decoder_bias": True,', '"subtract_decoder_bias": False,'),
        (SAE_LATENTS,),
    ),
    Mutation(
        "gemma_scope_decoder_bias_subtracted",
        "Gemma Scope SAEs encode x - b_dec (its JumpReLU SAEs read x itself)",
        replace("ingest/sae/gemma_scope.py", '"subtract_decoder_bias": False,', '"subtract_decoder_bias": True,'),
        (SAE_LATENTS,),
    ),
    Mutation(
        "hook_z_write_channel_major",
        "an attention-z SAE's decoder rows mapped through W_O flattened channel-major instead of head-major",
        replace(
            "ingest/sae/record.py",
            "flat = w_o.reshape(-1, w_o.shape[-1])",
            "flat = w_o.transpose(0, 1).reshape(-1, w_o.shape[-1])",
        ),
        (f"{SAE}::test_latent_views_equal_the_oracle",),
    ),
    Mutation(
        "openai_topk_input_not_layer_normalised",
        "an OpenAI sparse_autoencoder TopK SAE encodes its input as it is (the package's loader layer-normalises it)",
        replace("ingest/sae/openai.py", '"layer_norm_input": True}', '"layer_norm_input": False}'),
        (f"{SAE_LATENTS}[reference]",),
    ),
    Mutation(
        "sae_layer_norm_with_biased_std",
        "a layer-normalising SAE divides by the biased standard deviation (sparse_autoencoder's LN uses torch's "
        "unbiased std)",
        replace(
            "ingest/sae/autoencoder.py", "x.std(dim=-1, keepdim=True)", "x.std(dim=-1, keepdim=True, correction=0)"
        ),
        (f"{SAE_LATENTS}[reference]",),
    ),
    Mutation(
        "sae_write_norm_ignores_input_std",
        "a layer-normalising SAE's latents' write norms leave out the input's std that un-normalises their writes",
        replace(SAE_VIEWS, "(a.value * n.value * coalesce(s.value, 1))::FLOAT", "(a.value * n.value)::FLOAT"),
        (f"{SAE}::test_latent_views_equal_the_oracle[reference]",),
    ),
    Mutation(
        "sae_direct_effects_without_cap_slopes",
        "latents' direct effects leave out the soft-capped logits' slopes (right for uncapped models only)",
        replace(
            SAE_VIEWS,
            "coalesce(s.value, 1) * (p.target_slope * ft.value - p.distractor_slope * coalesce(fd.value, 0))",
            "coalesce(s.value, 1) * (ft.value - coalesce(fd.value, 0))",
        ),
        (
            f"{SAE_CAPPED}::test_latent_direct_effects_equal_the_oracle_through_the_cap",
            f"{SAE_CAPPED}::test_latent_direct_effects_for_another_pair_equal_the_oracle",
        ),
    ),
    Mutation(
        "sae_error_direct_effects_without_cap_slopes",
        "an SAE error's direct effect leaves out the soft-capped logits' slopes",
        replace(
            SAE_VIEWS,
            "(sum(a.forward * (a.target_slope * ft.value - a.distractor_slope * coalesce(fd.value, 0)))",
            "(sum(a.forward * (ft.value - coalesce(fd.value, 0)))",
        ),
        (f"{SAE_CAPPED}::test_direct_effects_add_up_to_the_oracles_site_effect",),
    ),
    Mutation(
        "post_norm_gain_dropped_from_direction_factors",
        "a node's direct effect in a model with norms after the blocks ignores that norm's gain (W_out . u, not "
        "W_out . (gain_post * u)) in the factors the ingest stores",
        replace("ingest/factors.py", "return u if gain is None else gain * u", "return u"),
        views("gemma2", ORACLE, DECOMPOSE),
    ),
    Mutation(
        "post_norm_gain_dropped_in_query_time_factors",
        "weight_factors (a token given at query time whose factors are not stored) ignores the gain of the norms"
        " after the blocks",
        replace(PAIRS_WEIGHTS, "u.value * g.value AS value", "u.value AS value"),
        views("gemma2", "test_factors_from_the_weights_equal_the_factors_stored_at_ingest"),
    ),
    Mutation(
        "direct_effect_prompts_materialised",
        "the prompts' objectives are a materialised CTE, so a filter on prompt_id does not reach them and the"
        " view reads every token's rows of a prompt (the last tokens' range spans all prompts' lengths)",
        replace(
            PAIRS,
            "WITH p AS NOT MATERIALIZED (SELECT * FROM prompt_pairs(t, d)),",
            "WITH p AS (SELECT * FROM prompt_pairs(t, d)),",
        ),
        (f"{PLANS}::test_a_direct_effect_view_reads_only_the_rows_it_needs",),
    ),
    Mutation(
        "stored_factors_recomputed_for_a_query_time_pair",
        "direct_effects(t, d) computes both tokens' factors from the weight matrices though direction_factors"
        " holds them (every query of a new pair scans W_out and W_O)",
        replace(
            PAIRS,
            "SELECT * FROM direction_factors WHERE t IS NULL OR token_id = t OR token_id = d\n"
            "UNION ALL SELECT * FROM weight_factors(t, d, false) WHERE t IS NOT NULL;",
            "SELECT * FROM direction_factors WHERE t IS NULL\n"
            "UNION ALL SELECT * FROM weight_factors(t, d, true) WHERE t IS NOT NULL;",
        ),
        (f"{PLANS}::test_a_pair_of_stored_tokens_reads_no_weight_matrix",),
    ),
    Mutation(
        "query_time_directions_estimated_as_large_as_the_weights",
        "the post-block gains join the directions with a LEFT JOIN on the weights, which the planner estimates"
        " as large as a weight matrix: it may hash W_out (26 M rows, 2.5 GB for SmolLM2) rather than probe it",
        replace(
            PAIRS_WEIGHTS,
            "SELECT u.model_id, u.token_id, g.layer, u.channel, u.value * g.value AS value\n"
            "FROM u JOIN gains g ON g.model_id = u.model_id AND g.channel = u.channel\n"
            "UNION ALL\n"
            "SELECT u.model_id, u.token_id, l.layer, u.channel, u.value\n"
            "FROM u JOIN (SELECT DISTINCT model_id, layer FROM weights WHERE location = block || '.residual_bias') l"
            " ON l.model_id = u.model_id\n"
            "WHERE NOT EXISTS (SELECT 1 FROM gains g WHERE g.model_id = u.model_id);",
            "SELECT u.model_id, u.token_id, l.layer, u.channel, u.value * coalesce(g.value, 1) AS value\n"
            "FROM u JOIN (SELECT DISTINCT model_id, layer FROM weights WHERE location = block || '.residual_bias') l"
            " ON l.model_id = u.model_id\n"
            "LEFT JOIN gains g ON g.model_id = u.model_id AND g.layer = l.layer AND g.channel = u.channel;",
        ),
        (f"{PLANS}::test_a_pair_of_stored_tokens_reads_no_weight_matrix",),
    ),
    Mutation(
        "post_norm_gain_dropped_from_write_norms",
        "write norms of a model with norms after the blocks leave out that norm's gain (norms of W_out[i], v W_O)",
        (
            *replace("ingest/factors.py", "else w.double() * gain", "else w.double()"),
            *replace(MODEL, "w_o_written = w_o * self.w(", "w_o_written = w_o + 0 * self.w("),
        ),
        (*views("gemma2"), *parity("gemma2")),
    ),
    Mutation(
        "post_norm_scale_ignored_in_direct_effects",
        "node direct effects are not divided by the post-block norm's scale at the last token",
        (
            *replace(DIRECT, "/ (p.final_scale * coalesce(s.value, 1)))::FLOAT", "/ p.final_scale)::FLOAT"),
            *replace(DIRECT, "(a.forward * vd.value / coalesce(s.value, 1))::FLOAT", "(a.forward * vd.value)::FLOAT"),
        ),
        views("gemma2", ORACLE, DECOMPOSE),
    ),
    Mutation(
        "post_norm_scale_ignored_in_write_norms",
        "neuron write norms are not divided by the post-block norm's scale at their token",
        replace("queries/derived/mlp_write_norm.sql", "n.value / coalesce(s.value, 1))", "n.value)"),
        views("gemma2"),
    ),
    Mutation(
        "post_norm_scale_missing_read_as_one",
        "a model with norms after the blocks whose scales were not stored gets undivided direct effects, not none",
        replace(
            DIRECT,
            "a.forward IS NOT NULL AND (s.value IS NOT NULL OR NOT p.post_block_norms);\n\n-- p[l,T,k,h]",
            "a.forward IS NOT NULL;\n\n-- p[l,T,k,h]",
        ),
        (GEMMA2_INGEST,),
    ),
    Mutation(
        "post_norm_scales_not_captured_by_default",
        "the default capture leaves out the post-block norm scales the views divide by",
        replace("warehouse/registry.py", '    "attn_post_ln.scale": (PassType.FORWARD,),\n', ""),
        (GEMMA2_INGEST,),
    ),
    Mutation(
        "final_softcap_slope_ignored",
        "direct effects in a model with soft-capped final logits use the uncapped logit's gradient (slope 1)",
        replace(
            "queries/support/20_pairs.sql",
            "CASE WHEN final_logit_softcap IS NULL THEN 1 ELSE 1 - tanh(zt / final_logit_softcap) ^ 2 END",
            "1",
        ),
        views("gemma2", ORACLE, DECOMPOSE, "test_closed_form_final_residual_grad_equals_stored_gradient"),
    ),
    Mutation(
        "final_softcap_slope_of_capped_logit",
        "the soft cap's slope taken at the capped logit, 1 - tanh(logit / cap)^2, instead of at the uncapped one",
        replace(
            "queries/support/20_pairs.sql",
            "z.value + b.value AS value",
            "p.final_logit_softcap * tanh((z.value + b.value) / p.final_logit_softcap) AS value",
        ),
        views("gemma2", ORACLE, DECOMPOSE),
    ),
    Mutation(
        "phi3_fused_gate_up_halves_swapped",
        "Phi-3's fused gate/up projection split with the up rows read as the gate",
        swap("ingest/families/phi3.py", 'm + "gate_proj.weight": cfg.d_mlp', 'm + "up_proj.weight": cfg.d_mlp'),
        parity("phi3"),
    ),
    Mutation(
        "phi3_fused_key_value_swapped",
        "Phi-3's fused query/key/value projection split with the key and value rows exchanged",
        swap("ingest/families/phi3.py", 'a + "k_proj.weight": kv', 'a + "v_proj.weight": kv'),
        parity("phi3"),
    ),
    Mutation(
        "qwen3_qk_norm_skipped",
        "Qwen3's queries and keys enter the rotary without their per-head RMSNorm",
        replace(MODEL, "if cfg.qk_norm is not None:", "if False:"),
        parity("qwen3"),
    ),
    Mutation(
        "olmo2_qk_norm_per_head",
        "OLMo 2's queries and keys normed per head instead of over all heads' channels together",
        replace(MODEL, 'axes = (-1,) if self.config.qk_norm == "head" else (-2, -1)', "axes = (-1,)"),
        parity("olmo2"),
    ),
    Mutation(
        "olmo2_blocks_read_a_normed_residual",
        "a model without norms before the blocks (OLMo 2) still has its blocks read an RMS-normed residual",
        replace(MODEL, "if not self.config.pre_block_norms:\n            return x", "if False:\n            return x"),
        parity("olmo2"),
    ),
    Mutation(
        "attention_softcap_ignored",
        "attention logits are not soft-capped before the softmax (Gemma 2)",
        replace(MODEL, "return cap * torch.tanh(s / cap) if cap is not None else s", "return s"),
        (*parity("gemma2"), *views("gemma2", "test_norm_scales_and_attention_logits_match_transformers")),
    ),
    Mutation(
        "summary_rest_keeps_first_token",
        "the summary of the tokens after the first counts position 0 too",
        replace(SUMMARIES, "((token == 0) if first else (token > 0))", "((token == 0) if first else (token >= 0))"),
        (f"{SUMMARY_TESTS}::test_every_summary_equals_the_aggregate_of_its_rows[lake]",),
    ),
    Mutation(
        "summary_ignores_bfloat16_rounding",
        "summaries are taken of the float32 values when the lake stores them rounded to bfloat16",
        replace(SUMMARIES, "if self.bfloat16:  # torch rounds", "if False:  # torch rounds"),
        (f"{SUMMARY_TESTS}::test_every_summary_equals_the_aggregate_of_its_rows[lake]",),
    ),
    Mutation(
        "summary_histogram_ignores_the_edge_inside_a_bit_range",
        "a float32 value is binned by its top 16 bits alone, though an edge can fall between their values",
        replace(
            BATCH,
            "bins = base.index_select(0, high) + (values.reshape(-1) >= step.index_select(0, high))",
            "bins = base.index_select(0, high)",
        ),
        (f"{SUMMARY_TESTS}::test_every_summary_equals_the_aggregate_of_its_rows[torch_lake]",),
    ),
    Mutation(
        "summary_histogram_drops_the_tiny_positives",
        "merging the zeros' own bin back, the values in (0, 1e-5) are left out of the histogram",
        replace(BATCH, "hist[_ZERO : _ZERO + 2].sum(0, keepdim=True)", "hist[_ZERO : _ZERO + 1]"),
        (f"{SUMMARY_TESTS}::test_every_summary_equals_the_aggregate_of_its_rows[lake]",),
    ),
    Mutation(
        "summary_examples_beat_the_running_best",
        "a batch's example candidates must beat the running highest value, not the running K-th",
        replace(
            SUMMARIES,
            "return self.value[:, -1].clone() if self.value.shape[1]",
            "return self.value[:, 0].clone() if self.value.shape[1]",
        ),
        (f"{SUMMARY_TESTS}::test_examples_hold_every_nodes_top_and_bottom_k[lake]",),
    ),
    Mutation(
        "summary_fold_keeps_the_last_batch",
        "folding a batch into the running figures replaces them instead of adding",
        replace(SUMMARIES, "m.figures if before is None else before.figures + m.figures", "m.figures"),
        (f"{SUMMARY_TESTS}::test_every_summary_equals_the_aggregate_of_its_rows[lake]",),
    ),
    Mutation(
        "summary_flush_appends",
        "a flush adds the run's running figures beside the ones it flushed before instead of replacing them",
        replace(WRITER, "for table in summaries.TABLES if whole else summaries.TABLES[:1]:", "for table in ():"),
        (f"{SUMMARY_TESTS}::test_every_summary_equals_the_aggregate_of_its_rows[lake]",),
    ),
    Mutation(
        "summary_rerun_counts_its_batch_twice",
        "a commit rerun after a conflict folds its batch into the running summaries a second time",
        replace(SUMMARIES, "        state.rollback()  # a commit that failed", "        pass  # a commit that failed"),
        (f"{SUMMARY_TESTS}::test_a_commit_that_fails_or_reruns_counts_its_batch_once",),
    ),
    Mutation(
        "summary_compiled_histogram_ignores_the_edge_inside_a_bit_range",
        "the compiled histogram bins a float32 value by its top 16 bits alone",
        replace(KERNELS, "hist[j, base[top] + (values[i, j] >= step[top])] += 1", "hist[j, base[top]] += 1"),
        (f"{SUMMARY_TESTS}::test_every_summary_equals_the_aggregate_of_its_rows[lake]",),
    ),
    Mutation(
        "summary_compiled_max_is_the_last_value",
        "the compiled column maximum keeps the last row's value",
        replace(KERNELS, "hi[j] = v if v > hi[j] else hi[j]", "hi[j] = v"),
        (f"{SUMMARY_TESTS}::test_every_summary_equals_the_aggregate_of_its_rows[lake]",),
    ),
    Mutation(
        "summary_compiled_insert_needs_the_best",
        "a compiled insertion enters the best K only above the node's highest value, not its K-th",
        replace(KERNELS, "if not v > best[n, k - 1]:", "if not v > best[n, 0]:"),
        (f"{SUMMARY_TESTS}::test_examples_hold_every_nodes_top_and_bottom_k[lake]",),
    ),
    Mutation(
        "summary_compiled_bottom_candidates_looked_for_above",
        "the compiled bottom-side candidates are looked for in the columns whose minimum is above the limit",
        replace(KERNELS, "extreme > limit if top else extreme < limit", "extreme > limit"),
        (f"{SUMMARY_TESTS}::test_examples_hold_every_nodes_top_and_bottom_k[lake]",),
    ),
    Mutation(
        "summary_sparse_counts_the_values_without_rows",
        "an SAE latent's histogram counts the zeros that have no stored row",
        replace(BATCH, "    hist[_ZERO] -= stored.shape[0] - n  #", "    hist[_ZERO] -= 0  #"),
        (f"{SUMMARY_TESTS}::test_every_summary_equals_the_aggregate_of_its_rows[sae_lake]",),
    ),
    Mutation(
        "summary_sparse_placeholders_stored_as_examples",
        "a latent with fewer than K rows stores the -inf places of its best K as examples",
        replace(
            "ingest/summary_tables.py",
            "new = torch.isfinite(best.value)  #",
            "new = torch.ones_like(best.value, dtype=torch.bool)  #",
        ),
        (f"{SUMMARY_TESTS}::test_examples_hold_every_nodes_top_and_bottom_k[sae_lake]",),
    ),
    Mutation(
        "summary_sae_runs_without_sae_summaries_not_scanned",
        "a run stored before SAE summaries counts as covered for the SAE dsts: its rows are left out",
        replace("queries/summary_sql.py", "    if written_by_sae(dst):", "    if False:"),
        (f"{SUMMARY_TESTS}::test_sae_questions_merge_summaries_with_a_scan_of_runs_stored_without_them",),
    ),
    Mutation(
        "summary_ties_keep_any_positions",
        "of equal values the running best K keep whichever torch's top-k returns, not the earliest positions",
        replace(
            SUMMARIES,
            "    value, kept = values.sort(dim=1, descending=True, stable=True)\n"
            "    return value[:, :EXAMPLES_K], kept[:, :EXAMPLES_K]",
            "    return values.topk(min(EXAMPLES_K, values.shape[1]), dim=1)",
        ),
        (f"{SUMMARY_TESTS}::test_of_tied_values_the_earliest_positions_are_kept",),
    ),
    Mutation(
        "node_table_columns_read_other_nodes",
        "the node table's columns read the rows of the ranked nodes' layers as their node indices",
        replace(
            "queries/one_prompt.py",
            "str(int(v)) for v in set(ranked[c].to_pylist())",
            "str(int(v)) for v in set(ranked['layer'].to_pylist())",
        ),
        ("tests/test_views.py::test_node_table_columns_are_each_nodes_view_values[gpt2]",),
    ),
    Mutation(
        "node_table_bottom_ranked_as_top",
        "the node table's bottom k are the next highest nodes after the top k",
        replace("queries/one_prompt.py", "ORDER BY value ASC, {key} LIMIT ?", "ORDER BY value DESC, {key} LIMIT ?"),
        ("tests/test_api.py::test_top_nodes_union_of_top_and_bottom",),
    ),
    Mutation(
        "summaries_flushed_every_4096_tokens_however_fast",
        "a run's summaries flush every FLUSH_TOKENS tokens whatever the time since the last flush",
        replace(SUMMARIES, " and time.monotonic() - state.flushed_at >= state.flush_seconds", ""),
        ("tests/test_summary_flushes.py",),
    ),
    Mutation(
        "summaries_flush_time_kept_from_the_run_start",
        "the time of a run's last flush is never moved on, so once due every commit flushes",
        replace(SUMMARIES, "            state.flushed_at = self._flushed_at\n", "            pass\n"),
        ("tests/test_summary_flushes.py",),
    ),
    Mutation(
        "summary_pool_files_never_rewritten",
        "a pool's rows are never rewritten at a merge, so its files and delete files grow with every run",
        replace(MERGE, "if pool_files(con, table, target) > MAX_POOL_FILES:", "if False:"),
        (f"{MERGE_TESTS}::test_a_pools_files_stay_few_as_runs_merge",),
    ),
    Mutation(
        "summary_pool_rewrite_keeps_the_small_files",
        "a pool's rewrite rewrites its largest file and leaves the small files the merges added",
        replace(
            MERGE, 'where, params = "run_id = ? AND filename <> ?"', 'where, params = "run_id = ? AND filename = ?"'
        ),
        (f"{MERGE_TESTS}::test_a_pools_files_stay_few_as_runs_merge",),
    ),
    Mutation(
        "summary_pool_rewrite_keeps_the_old_rows",
        "a pool's rewrite inserts its rows again without deleting the old ones",
        replace(MERGE, '        con.execute(f"DELETE FROM {table} WHERE {where}", params)\n', ""),
        (f"{MERGE_TESTS}::test_a_pools_files_stay_few_as_runs_merge",),
    ),
    Mutation(
        "summary_merge_keeps_the_largest_minimum",
        "runs merged into a pool keep the largest of their minima as the node's minimum",
        replace(MERGE, '"min": "min(min)"', '"min": "max(min)"'),
        (f"{MERGE_TESTS}::test_merged_summaries_equal_one_runs_over_the_same_prompts",),
    ),
    Mutation(
        "summary_merge_histogram_keeps_the_largest_count",
        "merged histograms keep each bin's largest count instead of adding them",
        replace(MERGE, "f'sum(hist[{i}])::{cast}'", "f'max(hist[{i}])::{cast}'"),
        (f"{MERGE_TESTS}::test_merged_summaries_equal_one_runs_over_the_same_prompts",),
    ),
    Mutation(
        "summary_merge_bottom_examples_ordered_as_top",
        "merging examples, the bottom side keeps its K highest values instead of its K lowest",
        replace(MERGE, "CASE WHEN side = 'top' THEN -value ELSE value END", "-value"),
        (f"{MERGE_TESTS}::test_merged_examples_are_each_nodes_k_best_of_the_union",),
    ),
    Mutation(
        "summary_merge_keeps_k_minus_one_examples",
        "merging examples keeps one fewer than K per node and side",
        replace(
            MERGE, 'params = {"target": target, "k": EXAMPLES_K}', 'params = {"target": target, "k": EXAMPLES_K - 1}'
        ),
        (f"{MERGE_TESTS}::test_merged_examples_are_each_nodes_k_best_of_the_union", *MERGE_TIES),
    ),
    Mutation(
        "summary_merge_candidates_leave_out_ties_with_the_kth",
        "merging examples, a value equal to the pool's K-th is no candidate, though it comes first by prompt",
        replace(
            MERGE,
            "e.value >= t.kth_top ELSE e.value <= t.kth_bottom",
            "e.value > t.kth_top ELSE e.value < t.kth_bottom",
        ),
        MERGE_TIES,
    ),
    Mutation(
        "summary_merge_ties_keep_the_latest_prompt",
        "merging examples, of equal values the one of the latest prompt is kept first",
        replace(
            MERGE, 'ORDER = f"{PLACE}, prompt_id, token, token2"', 'ORDER = f"{PLACE}, prompt_id DESC, token, token2"'
        ),
        MERGE_TIES,
    ),
    Mutation(
        "summary_merge_counts_ties_with_the_best_candidate_ahead",
        "merging examples, a pool row equal to a node's best candidate counts as ahead of it and is ranked too",
        replace(MERGE, "FILTER ({PLACE} < lead) AS ahead", "FILTER ({PLACE} <= lead) AS ahead"),
        MERGE_TIES,
    ),
    Mutation(
        "summary_merge_kth_one_place_late",
        "after a merge a node's K-th example value is that of its (K+1)-th",
        replace(
            MERGE,
            "max(value) FILTER (side = 'top' AND place = $k) AS top",
            "max(value) FILTER (side = 'top' AND place = $k + 1) AS top",
        ),
        MERGE_TIES,
    ),
    Mutation(
        "summary_kth_of_the_run_one_place_early",
        "a run's summary rows give its (K-1)-th highest and lowest example as the K-th",
        replace("ingest/summary_tables.py", "best.value[:, EXAMPLES_K - 1]", "best.value[:, EXAMPLES_K - 2]"),
        (f"{MERGE_TESTS}::test_merged_summaries_equal_one_runs_over_the_same_prompts",),
    ),
    Mutation(
        "summary_merge_rewrites_the_merged_nodes_examples",
        "a merge deletes the pool examples of the nodes it reaches and inserts their best K again (exact, a rewrite)",
        replace(MERGE, "WHERE pooled AND place > $k)", "WHERE pooled)")
        + replace(MERGE, '" WHERE NOT pooled AND place <= $k",', '" WHERE place <= $k",'),
        (f"{MERGE_TESTS}::test_a_runs_merge_writes_what_enters_the_pool_not_the_pool",),
    ),
    Mutation(
        "summary_merge_ignores_precision",
        "a bfloat16 run's summaries are merged into the pool of float32 runs of the same model",
        replace(MERGE, '"dtype", "precision", "prepend_bos"', '"dtype", "prepend_bos"'),
        (f"{MERGE_TESTS}::test_a_killed_run_is_scanned_past_its_summaries_before_and_after_compact",),
    ),
    Mutation(
        "summary_pooled_run_answered_from_its_own_rows",
        "a question about one run of a pool reads the rows stored under its id (the pool's, or none)",
        replace("queries/summaries.py", "            pool = pool_members(con, run_id)", "            pool = []"),
        (f"{MERGE_TESTS}::test_a_run_of_a_pool_is_answered_by_a_scan_of_its_prompts",),
    ),
    Mutation(
        "summary_pool_members_sae_rows_scanned_again",
        "a pool's members seem to have no SAE summaries (their rows are the holder's): their prompts are scanned too",
        replace(MERGE, "    if not db.has_table(con, POOLS):\n        return run\n", "    return run\n"),
        (f"{MERGE_TESTS}::test_runs_with_an_sae_share_a_pool_and_their_rows_are_not_scanned_again",),
    ),
    Mutation(
        "summary_runs_not_merged_at_commit",
        "a finished run keeps its own summary rows: every query reads one set per run",
        replace(WRITER, "if join_pool(con, run_id, tables) is None:", "if True:"),
        (f"{MERGE_TESTS}::test_runs_of_one_setting_keep_one_pool_of_rows",),
    ),
    Mutation(
        "node_questions_without_a_layer",
        "examples and node-stats of a dst with layers, asked without --layer, answer for no rows in silence",
        replace("queries/summaries.py", "    if layer is None and layered:", "    if False:"),
        (f"{SUMMARY_TESTS}::test_bad_input_gets_one_line",),
    ),
    Mutation(
        "summary_last_flush_keeps_superseded_examples",
        "the run's last flush adds its examples beside the ones flushed before, some superseded since",
        replace(WRITER, "_store_summaries(con, run_id, tables, whole=True)", "_store_summaries(con, run_id, tables)"),
        (f"{SUMMARY_TESTS}::test_examples_hold_every_nodes_top_and_bottom_k[lake]",),
    ),
    Mutation(
        "summary_tail_not_scanned",
        "prompts the summaries do not cover yet (a killed run's last batches) are left out of the answers",
        replace(
            "queries/summaries.py",
            "        if tail.prompts:  # only then",
            "        if False:  # only then",
        ),
        (f"{SUMMARY_TESTS}::test_a_run_whose_process_died_is_answered_from_its_summaries_and_a_scan_of_the_rest",),
    ),
    Mutation(
        "rank_skip_first_ignored",
        "rank, node statistics and examples from the summaries keep the first token whatever --skip-first says",
        replace(
            "queries/summary_sql.py",
            '    if skip_first:\n        where += " AND NOT first_token"',
            "    if False:\n        pass",
        ),
        (f"{SUMMARY_TESTS}::test_rank_equals_a_direct_sql_aggregate",),
    ),
    Mutation(
        "histogram_plot_infinite_edges",
        "node-stats --plot with the summaries' bins draws the outer bins from -inf and to +inf (a blank image)",
        replace(
            "queries/plots.py",
            "        lows[0] = _finite_edge(lows[0], highs[0], low_data, -1)\n"
            "        highs[-1] = _finite_edge(highs[-1], lows[-1], high_data, 1)\n",
            "",
        ),
        ("tests/test_plots.py::test_histogram_outer_bins_reach_the_data_not_infinity",),
    ),
    Mutation(
        "pandas_missing_reported_as_query_failed",
        'Warehouse.sql(output="pandas") without pandas fails as "query failed", not naming pip install pandas',
        replace(
            "queries/api.py", '        if output == "pandas":\n            try:', "        if False:\n            try:"
        ),
        ("tests/test_first_steps.py::test_pandas_output_without_pandas_names_the_install",),
    ),
    Mutation(
        "missing_model_package_hint_bare_pip",
        "a missing model package's message names a bare `pip`, which may install into another environment",
        replace("ingest/tokenizers.py", 'f"{shlex.quote(sys.executable)} -m pip install', 'f"pip install'),
        ("tests/test_first_steps.py",),
    ),
    Mutation(
        "bench_ingest_patches_the_old_worker_module",
        "bench.ingest wraps location_rows and friends in ingest.worker, which no longer holds them (a crash)",
        replace(
            "bench/ingest.py",
            'setattr(passes, name, wrap("arrow conversion", getattr(passes, name)))',
            'setattr(worker, name, wrap("arrow conversion", getattr(worker, name)))',
        ),
        ("tests/test_bench_smoke.py::test_ingest_bench_times_the_worker_it_patches",),
    ),
    Mutation(
        "bench_ingest_wraps_functions_nothing_calls",
        "bench.ingest wraps the capture module's functions, which the passes call by their own names: the "
        "arrow conversion time goes missing from the figures",
        (
            Edit(
                "bench/ingest.py",
                "    from ingest import passes, worker\n    from ingest.model_rows",
                "    from ingest import capture, worker\n    from ingest.model_rows",
            ),
            Edit(
                "bench/ingest.py",
                'setattr(passes, name, wrap("arrow conversion", getattr(passes, name)))',
                'setattr(capture, name, wrap("arrow conversion", getattr(capture, name)))',
            ),
        ),
        ("tests/test_bench_smoke.py::test_ingest_bench_times_the_worker_it_patches",),
    ),
    Mutation(
        "token_pair_rows_lose_query_offset",
        "a prompt's token-pair rows split across record batches restart their query tokens at 0 in each",
        replace("ingest/capture.py", "selection = [q + t0, k]", "selection = [q, k]"),
        (f"{ROUNDTRIP}::test_every_location_rebuilds_what_the_model_captured[gpt2-tiny]",),
    ),
    Mutation(
        "summary_figures_later_column_blocks_read_the_first",
        "the compiled figures of every column block after the first are taken over the first block's values",
        replace(KERNELS, "row = values[i, start:end]", "row = values[i, 0 : end - start]"),
        (f"{SUMMARY_TESTS}::test_every_summary_equals_the_aggregate_of_its_rows[lake]",),
    ),
    Mutation(
        "rank_pass_ignored",
        "rank --pass backward ranks the forward values",
        replace(
            READING,
            "rank_nodes(dst, by, k, layer, run_id, skip_first, pass_type)",
            "rank_nodes(dst, by, k, layer, run_id, skip_first)",
        ),
        (READING_OPTIONS,),
    ),
    Mutation(
        "examples_pass_ignored",
        "examples --pass backward lists the forward values' examples",
        replace(
            READING,
            "args = (dst, layer, node_index, k, context, head, run_id, pass_type, bottom, skip_first)",
            'args = (dst, layer, node_index, k, context, head, run_id, "forward", bottom, skip_first)',
        ),
        (READING_OPTIONS,),
    ),
    Mutation(
        "node_stats_head_ignored",
        "node-stats --head answers for the channel over every head",
        replace(
            READING,
            "wh.node_summary(dst, layer, node_index, head, run_id, pass_type, skip_first)",
            "wh.node_summary(dst, layer, node_index, None, run_id, pass_type, skip_first)",
        ),
        (READING_OPTIONS,),
    ),
    Mutation(
        "ingest_precision_option_dropped",
        "ingest --precision bfloat16 stores float32",
        replace("commands/ingesting.py", "precision=precision,", 'precision="float32",'),
        ("tests/test_options.py::test_the_ingest_command_builds_the_settings_its_options_say",),
    ),
    Mutation(
        "prompt_key_without_backward",
        "the prompt key leaves out --no-backward: a prompt stored without gradients never gets them",
        replace(WORKER, "options.backward, options.truncate, *tokenization", "options.truncate, *tokenization"),
        (PROMPT_KEYS,),
    ),
    Mutation(
        "prompt_key_without_layers",
        "the prompt key leaves out --layers: a prompt stored for one layer counts as stored for all",
        replace(
            WORKER, "[spec.labels(), sorted(spec.layers or []), options.backward", "[spec.labels(), options.backward"
        ),
        (PROMPT_KEYS,),
    ),
    Mutation(
        "bfloat16_ties_away_from_zero",
        "--precision bfloat16 rounds exact ties away from zero instead of to even",
        replace(
            "warehouse/facts.py",
            "(bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))",
            "(bits + np.uint32(0x8000))",
        ),
        (f"{LAKE}::test_bfloat16_rounding_breaks_exact_ties_to_even_as_torch_does",),
    ),
    Mutation(
        "cache_vector_weights_by_column",
        "the stored cache reads a weight vector (an output bias, the final gain) by its empty column index",
        replace(CACHE_WEIGHTS, '1: (rows["r"],)', '1: (rows["c"],)'),
        (f"{TL_CACHE}::test_every_analysis_equals_transformer_lens[gpt2]",),
    ),
    Mutation(
        "cache_lists_the_held_final_scale_gradient",
        "the stored cache lists ln_final.hook_scale_grad, which the logit-difference objective never has",
        replace("queries/cache.py", 'return ref.location == "resid.ln_f.scale" and all(', "return False and all("),
        (TL_CACHE_KEYS,),
    ),
    Mutation(
        "cache_query_key_scale_inverted",
        "hook_q and hook_k come back times the square root of the attention scaling instead of divided by it",
        replace(HOOK_NAMES, "(qk_scale if backward else 1 / qk_scale)", "(1 / qk_scale if backward else qk_scale)"),
        (TL_CACHE_KEYS,),
    ),
    Mutation(
        "cache_pattern_transposed",
        "attention patterns come back [batch, head, key, query]",
        replace("queries/cache.py", "tensor.permute(0, 3, 1, 2)", "tensor.permute(0, 3, 2, 1)"),
        (TL_CACHE_KEYS,),
    ),
    Mutation(
        "cache_resid_pre_of_the_same_layer",
        "blocks.L.hook_resid_pre reads layer L's resid.post_mlp instead of layer L - 1's",
        replace(HOOK_NAMES, 'resid.post_mlp", first_block=1, layer_shift=-1)', 'resid.post_mlp", first_block=1)'),
        (TL_CACHE_KEYS,),
    ),
    Mutation(
        "cache_masked_scores_zero",
        "attention scores above the diagonal come back 0 instead of -inf",
        replace("queries/cache.py", "fill = -np.inf if", "fill = 0.0 if"),
        (TL_CACHE_KEYS,),
    ),
    Mutation(
        "cache_bulk_read_groups_unsorted",
        "a cache read whole splits its rows by (dst, layer) without sorting them first",
        replace("queries/cache.py", 'np.searchsorted(rows["grp"][order], ', 'np.searchsorted(rows["grp"], '),
        (f"{TL_CACHE}::test_reading_whole_equals_reading_key_by_key[gpt2]",),
    ),
    Mutation(
        "tl_hooks_query_scale_inverted",
        "activations_by_hook gives hook_q in the warehouse's units (times the query/key scale)",
        replace(
            HOOK_NAMES,
            "WHEN pass_type = 'forward' THEN 1 / qk_scale ELSE",
            "WHEN pass_type = 'forward' THEN qk_scale ELSE",
        ),
        (f"{TL_CACHE}::test_tl_hooks_and_activations_by_hook_match_the_cache[gpt2]",),
    ),
    Mutation(
        "edge_attention_read_at_the_key_token",
        "an attention node's edge into a neuron reads the neuron's slope at the key token instead of the query's",
        replace(
            EDGES,
            "JOIN c ON c.prompt_id = p.prompt_id AND c.token = p.token",
            "JOIN c ON c.prompt_id = p.prompt_id AND c.token = p.token2",
        ),
        edges("llama"),
    ),
    Mutation(
        "edge_read_through_the_attention_norm_scale",
        "edges into a neuron divide by the attention norm's scale instead of the MLP norm's",
        replace(
            EDGES,
            "s.dst = 'mlp_input_layer_norm_scale' AND s.layer = z.layer",
            "s.dst = 'attn_input_layer_norm_scale' AND s.layer = z.layer",
        ),
        edges("llama"),
    ),
    Mutation(
        "edge_factor_directions_reversed",
        "the reader's direction is listed from the last residual channel to the first before it is dotted with the"
        " writes' vectors",
        replace(
            EDGES,
            "layer, list(u1 ORDER BY channel) AS u1,",
            "layer, list(u1 ORDER BY channel DESC) AS u1,",
        ),
        edges("gpt2"),
    ),
    Mutation(
        "write_factor_lists_reversed",
        "an upstream write, gained for each reader, is listed from the last residual channel to the first before it"
        " is dotted with the reader columns",
        replace(
            "queries/support/63_out_edges.sql",
            "* coalesce(g.value, 1) ORDER BY w.channel) AS value",
            "* coalesce(g.value, 1) ORDER BY w.channel DESC) AS value",
        ),
        ("tests/test_edges_from.py::test_edges_from_into_attention_sides_match_the_oracle[gpt2-mlp]",),
    ),
    Mutation(
        "edge_biases_missing",
        "the attention output biases get no edge rows",
        replace(EDGES, "f.kind IN ('attn_bias', 'mlp_bias')", "f.kind IN ('mlp_bias')"),
        edges("llama", EDGE_ORACLE, IDENTITY),
    ),
    Mutation(
        "edge_gated_up_read_dropped",
        "a gated neuron's up projection is left out of its read (only the gate's)",
        replace(EDGES, "CASE WHEN gated_mlp THEN mlp_activation(act, z) ELSE 0 END / scale AS c2", "0 / scale AS c2"),
        edges("llama"),
    ),
    Mutation(
        "edge_post_block_norm_scale_ignored",
        "an MLP neuron's write into a later neuron is not divided by the norm after its block (Gemma 2)",
        replace(
            EDGES,
            "a.forward * (c.c1 * f.f1 + c.c2 * f.f2) / coalesce(s.value, 1), c.grad",
            "a.forward * (c.c1 * f.f1 + c.c2 * f.f2), c.grad",
        ),
        edges("gemma2"),
    ),
    Mutation(
        "edge_read_direction_not_centred",
        "a LayerNorm model's read direction keeps its mean (the norm's centring left out)",
        replace(
            EDGES,
            "WHEN norm = 'layernorm' THEN avg(value) OVER (PARTITION BY model_id, first)",
            "WHEN norm = 'layernorm' THEN 0",
        ),
        edges("gpt2"),
    ),
    Mutation(
        "edge_from_write_not_centred",
        "edges out of a LayerNorm model's neuron keep the write's mean (the norm's centring left out)",
        replace(
            EDGES,
            "WHEN norm = 'layernorm' THEN avg(value) OVER (PARTITION BY model_id) ELSE 0 END AS value",
            "WHEN norm = 'layernorm' THEN 0 ELSE 0 END AS value",
        ),
        (f"{EDGE_TESTS}::test_edges_from_an_mlp_neuron_are_the_edges_into_its_readers[gpt2]",),
    ),
    Mutation(
        "edge_order_refused_after_the_source_layer",
        "edges_between says the later source neuron is in the last layer, not that it writes after the reader",
        replace(
            EDGES,
            "CASE WHEN up_layer >= down_layer THEN",
            "(SELECT problem FROM edge_problem(up_dst, up_layer, i, up_layer + 1)),"
            " CASE WHEN up_layer >= down_layer THEN",
        ),
        (f"{EDGE_TESTS}::test_edges_refuse_in_one_line[gpt2]",),
    ),
    Mutation(
        "sae_edge_input_std_of_the_first_token",
        "edges into a layer-normalising SAE's latent divide by its input's std at the prompt's first token",
        replace(
            SAE_READS,
            "ON s.prompt_id = f.prompt_id AND s.token = f.token AND s.dst",
            "ON s.prompt_id = f.prompt_id AND s.token = 0 AND s.dst",
        ),
        sae_edges(SAE_EDGE_ORACLE),
    ),
    Mutation(
        "sae_edge_input_normalisation_missing",
        "edges into a layer-normalising SAE's latent leave out the input's std (the normalisation)",
        replace(SAE_READS, "1 / coalesce(s.forward::DOUBLE + 1e-5, 1) AS c1", "1::DOUBLE AS c1"),
        sae_edges(SAE_EDGE_ORACLE),
    ),
    Mutation(
        "sae_encoder_centring_missing",
        "a layer-normalising SAE's stored encoder columns keep their mean, so the input's mean leaks into its reads",
        replace("ingest/sae/record.py", "w = w - w.mean(dim=0, keepdim=True)", "w = w"),
        sae_edges(SAE_EDGE_ORACLE),
    ),
    Mutation(
        "sae_edge_own_block_mlp_missing",
        "edges into a latent of an SAE on a block's output leave out that block's MLP neurons",
        replace(
            SAE_READS,
            "CASE location WHEN 'resid.post_mlp' THEN layer WHEN",
            "CASE location WHEN 'resid.post_mlp' THEN layer - 1 WHEN",
        ),
        sae_edges(SAE_EDGE_ORACLE, SAE_EDGE_IDENTITY),
    ),
    Mutation(
        "sae_encoder_decoder_bias_not_subtracted",
        "the stored encoder bias of an SAE that subtracts its decoder bias first leaves that subtraction out",
        replace("ingest/sae/record.py", "b = b - sae.b_dec.double() @ w", "b = b"),
        sae_edges(SAE_EDGE_IDENTITY),
    ),
    Mutation(
        "sae_source_read_at_the_next_token",
        "a latent's edge into an MLP neuron takes the neuron's slope at the next token",
        replace(
            SAE_SOURCES,
            "c ON c.prompt_id = l.prompt_id AND c.token = l.token",
            "c ON c.prompt_id = l.prompt_id AND c.token = l.token + 1",
        ),
        sae_edges(SAE_SOURCE_ORACLE),
    ),
    Mutation(
        "sae_source_input_std_missing",
        "a layer-normalising SAE's latent writes into an MLP neuron without the input's std",
        replace(
            SAE_SOURCES,
            "(l.forward * coalesce(s.forward, 1) * (c.c1 * f.f1 + c.c2 * f.f2))::DOUBLE AS activation",
            "(l.forward * (c.c1 * f.f1 + c.c2 * f.f2))::DOUBLE AS activation",
        ),
        sae_edges(SAE_SOURCE_ORACLE),
    ),
    Mutation(
        "sae_source_after_the_mlp_read",
        "the latents of an SAE on block L's output are sources of edges into MLP L, whose read is before them",
        replace(
            SAE_SOURCES,
            "(location = 'resid.post_mlp' AND layer < down_layer)",
            "(location = 'resid.post_mlp' AND layer <= down_layer)",
        ),
        sae_edges(SAE_SOURCE_ORACLE, sae_set="jumprelu_relu"),
    ),
    Mutation(
        "value_edge_read_at_the_query_token",
        "edges into an attention head's value side take the writes at the query token, not the key token",
        replace(
            ATTN_EDGES,
            "SELECT p.prompt_id, p.model_id, p.token, p.token2, p.token2, g.node_index",
            "SELECT p.prompt_id, p.model_id, p.token, p.token2, p.token, g.node_index",
        ),
        (f"{VALUE_ORACLE}[gpt2]",),
    ),
    Mutation(
        "value_edge_wrong_kv_head",
        "a grouped-query head's value side reads key/value head h mod H_kv instead of h // (H / H_kv)",
        replace(ATTN_EDGES, "THEN h ELSE h // (e.n_heads // e.n_kv_heads) END", "THEN h ELSE h % e.n_kv_heads END"),
        (f"{VALUE_ORACLE}[llama]",),
    ),
    Mutation(
        "attention_read_norm_scale_missing",
        "edges into an attention head's value, query or key side leave out the attention norm's scale",
        replace(ATTN_EDGES, "x.g / coalesce(s.forward::DOUBLE, 1) AS a", "x.g AS a"),
        (f"{VALUE_ORACLE}[llama]",),
    ),
    Mutation(
        "value_edge_attention_sources_missing",
        "edges into a value side leave out the attention nodes of the layer just before it",
        replace(
            ATTN_EDGES,
            "AND x.forward IS NOT NULL AND x.layer < down_layer",
            "AND x.forward IS NOT NULL AND x.layer < down_layer - 1",
        ),
        (f"{VALUE_ORACLE}[gpt2]",),
    ),
    Mutation(
        "attention_out_edge_read_at_the_key_token",
        "edges out of an attention node reach the MLP neurons at its key token, not its query token",
        replace(
            ATTN_EDGES,
            "JOIN mlp_read_slopes(up_layer, 32767, NULL) c ON c.prompt_id = p.prompt_id AND c.token = p.token\n",
            "JOIN mlp_read_slopes(up_layer, 32767, NULL) c ON c.prompt_id = p.prompt_id AND c.token = p.token2\n",
        ),
        (f"{ATTN_OUT_ORACLE}[llama]",),
    ),
    Mutation(
        "attention_out_edge_wrong_kv_head",
        "edges out of a grouped-query attention node read the values of key/value head h mod H_kv",
        replace(ATTN_EDGES, "v.head = h // (e.n_heads // e.n_kv_heads)", "v.head = h % e.n_kv_heads"),
        (f"{ATTN_OUT_ORACLE}[llama]",),
    ),
    Mutation(
        "query_side_read_at_the_key_token",
        "edges into a query side take the writes at the key token, not the query token",
        replace(
            ATTN_EDGES,
            "SELECT x.prompt_id, x.model_id, x.token, x.token2, x.token AS pos",
            "SELECT x.prompt_id, x.model_id, x.token, x.token2, x.token2 AS pos",
        ),
        (f"{QK_ORACLE}[gpt2-query]",),
    ),
    Mutation(
        "query_key_rotary_turned_forward",
        "the gradient of a rotated query or key is turned forward by its position, not back",
        replace(
            ATTN_EDGES,
            "CASE WHEN r.c < m.rot // 2 THEN o.g ELSE -o.g END",
            "CASE WHEN r.c < m.rot // 2 THEN -o.g ELSE o.g END",
        ),
        (f"{QK_ORACLE}[llama-query]",),
    ),
    Mutation(
        "query_key_soft_cap_slope_dropped",
        "the query and key sides leave out the attention logits' soft cap (Gemma 2)",
        replace(ATTN_EDGES, "CASE WHEN any_value(m.cap) IS NULL THEN 1 ELSE", "CASE WHEN true THEN 1 ELSE"),
        (f"{QK_ORACLE}[gemma2-query]", f"{QK_ORACLE}[gemma2-key]"),
    ),
    Mutation(
        "key_side_row_sum_taken_as_one",
        "the key side's 1 - p is taken from float32 probabilities (rounding for a probability near 1)",
        replace(ATTN_EDGES, "x.p * (x.total - x.p) * x.slope * a.value", "x.p * (1 - x.p) * x.slope * a.value"),
        (f"{QK_ORACLE}[gpt2-key]",),
    ),
    Mutation(
        "embedding_out_edge_not_centred",
        "edges out of a LayerNorm model's embedding keep its mean (the norm's centring left out)",
        replace(
            ATTN_EDGES,
            "avg(x.forward::DOUBLE)\n               OVER (PARTITION BY x.prompt_id, x.token)",
            "0 * avg(x.forward::DOUBLE)\n               OVER (PARTITION BY x.prompt_id, x.token)",
        ),
        (f"{ATTN_OUT_ORACLE}[gpt2]",),
    ),
    Mutation(
        "out_edge_attention_side_read_at_the_query_token",
        "edges out of a node into a later head's value or key side take the write at the query token, not the key",
        replace(
            OUT_EDGES,
            "ON x.prompt_id = a.prompt_id AND x.token = a.pos AND",
            "ON x.prompt_id = a.prompt_id AND x.token = a.token AND",
        ),
        (f"{OUT_ORACLE}[gpt2-mlp]",),
    ),
    Mutation(
        "out_edge_attention_side_wrong_kv_head",
        "edges out of a node into a grouped-query head's value or key side read key/value head h mod H_kv",
        replace(
            OUT_EDGES,
            "ELSE a.head // (e.n_heads // e.n_kv_heads) END AND x.col = a.c",
            "ELSE a.head % e.n_kv_heads END AND x.col = a.c",
        ),
        (f"{OUT_ORACLE}[llama-embedding]",),
    ),
    Mutation(
        "out_edge_value_side_attribution_from_a_probability_gradient",
        "edges out of a node into a value side take the probability gradient as the attribution, not 1 x activation",
        replace(OUT_EDGES, "CASE WHEN a.side = 'value' THEN 1 ELSE any_value(a.grad) END", "any_value(a.grad)"),
        (f"{OUT_ORACLE}[gpt2-attn]",),
    ),
    Mutation(
        "out_edge_write_not_centred",
        "edges out of a LayerNorm model's MLP neuron or attention node into attention sides keep the write's mean",
        replace(OUT_EDGES, "THEN w.centred_value ELSE w.value END", "THEN w.value ELSE w.value END"),
        (f"{OUT_ORACLE}[gpt2-mlp]",),
    ),
    Mutation(
        "out_edge_read_not_centred",
        "edges out of a LayerNorm model's node or embedding into attention sides leave the norm's centring out",
        replace(OUT_EDGES, "<> 'autoencoder.to_latent' AS centred", "<> 'autoencoder.to_latent' AND false AS centred"),
        (f"{OUT_ORACLE}[gpt2-embedding]",),
    ),
    Mutation(
        "out_edge_post_block_norm_scale_ignored",
        "edges out of an MLP neuron into attention sides are not divided by the norm after its block (Gemma 2)",
        replace(
            OUT_EDGES, "a.node_index AS c, a.forward / coalesce(s.value, 1) AS x", "a.node_index AS c, a.forward AS x"
        ),
        (f"{OUT_ORACLE}[gemma2-mlp]",),
    ),
    Mutation(
        "out_edge_same_layer_attention_as_reader",
        "edges out of a node reach its own block's attention heads, which read before it writes",
        replace(OUT_EDGES, "ELSE up_layer + 1 END AS first_attn", "ELSE up_layer END AS first_attn"),
        (f"{OUT_READERS}[gpt2-mlp]",),
    ),
    Mutation(
        "out_edge_own_block_sae_missing",
        "edges out of an MLP neuron leave out the latents of the SAE on its own block's output",
        replace(
            OUT_EDGES,
            "WHEN 'mlp_post_act' THEN s.last_mlp >= up_layer",
            "WHEN 'mlp_post_act' THEN s.last_mlp > up_layer",
        ),
        (f"{SAE_READERS}[gated_topk_openai-mlp]",),
    ),
    Mutation(
        "out_edge_sae_reader_input_std_missing",
        "edges out of a node into a layer-normalising SAE's latent leave out the input's std",
        replace(OUT_EDGES, "x.r / coalesce(s.forward::DOUBLE + 1e-5, 1), l.backward", "x.r, l.backward"),
        (f"{SAE_READERS}[gated_topk_openai-embedding]",),
    ),
    Mutation(
        "out_edge_sae_reader_at_the_next_token",
        "edges out of a node into an SAE latent take the latent at the token after the write",
        replace(
            OUT_EDGES,
            "ON x.prompt_id = l.prompt_id AND x.token = l.token AND",
            "ON x.prompt_id = l.prompt_id AND x.token = l.token - 1 AND",
        ),
        (f"{SAE_READERS}[gated_topk_openai-attn]",),
    ),
    Mutation(
        "attention_side_latent_source_after_the_read",
        "the latents of an SAE on block L's residual are sources of edges into layer L's attention sides, read before",
        replace(ATTN_EDGES, "AND s.last_attn < down_layer", "AND s.last_attn <= down_layer"),
        (f"{SAE_OUT_ATTN}[gated_topk_openai]",),
    ),
    Mutation(
        "attention_side_latent_source_input_std_missing",
        "a layer-normalising SAE's latent writes into an attention side without its input's std",
        replace(ATTN_EDGES, "l.forward::DOUBLE * coalesce(s.forward, 1) * f.f", "l.forward::DOUBLE * f.f"),
        (f"{SAE_OUT_ATTN}[gated_topk_openai]",),
    ),
    Mutation(
        "out_edge_query_key_sides_unchecked",
        "edges out of a node in a warehouse without stored queries and keys answer without the query and key sides",
        replace(
            OUT_EDGES,
            "    WHEN NOT EXISTS (SELECT 1 FROM facts WHERE dst = 'attn_query' AND layer >=",
            "    WHEN false AND (NOT EXISTS (SELECT 1 FROM facts WHERE dst = 'attn_query' AND layer >=",
        )
        + replace(
            OUT_EDGES,
            "dst = 'attn_key' AND layer >= (SELECT first_attn FROM reach))",
            "dst = 'attn_key' AND layer >= (SELECT first_attn FROM reach)))",
        ),
        (
            "tests/test_edges_from.py::test_edges_from_refuse_a_warehouse_without_what_later_heads_read[queries_and_keys]",
        ),
    ),
    Mutation(
        "out_edge_value_gradient_unchecked",
        "edges out of a node in a warehouse without the summed values' gradient answer without the value sides",
        replace(
            OUT_EDGES,
            "WHEN NOT EXISTS (SELECT 1 FROM facts WHERE dst = 'attn_weighted_sum_of_values' AND backward IS NOT NULL",
            "WHEN false AND NOT EXISTS (SELECT 1 FROM facts WHERE dst = 'attn_weighted_sum_of_values' AND backward"
            " IS NOT NULL",
        ),
        ("tests/test_edges_from.py::test_edges_from_refuse_a_warehouse_without_what_later_heads_read[value_gradient]",),
    ),
    Mutation(
        "out_edge_last_layer_neuron_refused_beside_an_sae",
        "edges out of a neuron of the last layer are refused though an SAE on its block's output reads it",
        replace(
            "queries/support/69_edge_dispatch.sql",
            "AND last_mlp >= up_layer) THEN 0 ELSE 1 END))",
            "AND last_mlp >= up_layer) THEN 1 ELSE 1 END))",
        ),
        (f"{SAE_READERS}[jumprelu_relu-mlp_last]",),
    ),
    Mutation(
        "edges_command_refuses_a_latent_of_the_embedding_sae_as_source",
        "actwh edges --from online_autoencoder_latent::N (the SAE on the embedding, no layer) asks for a layer",
        replace(
            "commands/reading.py",
            'no_layer = dst == "online_autoencoder_latent"',
            'no_layer = into is not None and dst == "online_autoencoder_latent"',
        ),
        ("tests/test_sae_edges_from.py::test_the_command_takes_an_sae_latent_as_the_upstream_node[gated_topk_openai]",),
    ),
    Mutation(
        "sae_out_edge_input_std_missing",
        "edges out of a layer-normalising SAE's latent into MLP neurons leave out its input's std",
        replace(OUT_EDGES, "l.forward::DOUBLE * coalesce(s.forward, 1)", "l.forward::DOUBLE"),
        (f"{SAE_OUT}[gated_topk_openai]",),
    ),
    Mutation(
        "sae_out_edge_reaches_the_mlp_before_its_site",
        "edges out of an SAE latent between attention and MLP miss that MLP, which reads after the site",
        replace(
            OUT_EDGES,
            "WHEN 'online_autoencoder_latent' THEN s.last_mlp + 1",
            "WHEN 'online_autoencoder_latent' THEN s.last_mlp + 2",
        ),
        (f"{SAE_OUT}[gated_topk_openai]",),
    ),
    Mutation(
        "interrupt_dropped_by_a_library_callback",
        "Ctrl-C handled inside a C library's callback (Numba compiling) is dropped and the ingest completes",
        replace(INTERRUPTS, "if _received and _depth and _main_thread():", "if False:"),
        (STAGES,),
    ),
    Mutation(
        "edge_writers_unchecked",
        "edges over a run of --layers or fewer --locations answer without the writes it left out, with no sign",
        replace(EDGES, "    FROM needed WHERE len(missing) > 0 OR layers IS NOT NULL", "    FROM needed WHERE false"),
        tuple(
            f"tests/test_edge_writers.py::test_edges_refuse_a_warehouse_that_left_writes_out[{c}]"
            for c in ("layers", "locations")
        ),
    ),
    Mutation(
        "facts_every_keeps_every_prompts_facts",
        "--facts-every N stores the facts of every prompt",
        replace(
            WORKER,
            'facts = "facts" in options.store and ordinal % options.facts_every == 0',
            'facts = "facts" in options.store',
        ),
        (f"{STORE}::test_facts_every_n_stores_the_facts_of_exactly_every_nth_prompt",),
    ),
    Mutation(
        "summaries_only_copies_every_prompts_tensors",
        "a prompt stored without facts still has its tensors copied out and written as fact rows",
        replace(PASSES, "kept = [b for b, p in enumerate(items) if p.facts]", "kept = list(range(len(items)))"),
        (f"{STORE}::test_a_summaries_only_pass_stores_no_fact_rows_and_says_what_it_kept",),
    ),
    Mutation(
        "prompt_without_facts_keyed_as_with_them",
        "a prompt stored without facts has the same resume key as one stored with them",
        replace(WORKER, 'payload = json.dumps([payload, "without facts"])', "pass"),
        (f"{STORE}::test_a_prompt_stored_without_facts_is_not_stored_for_an_ingest_that_keeps_them",),
    ),
    Mutation(
        "cache_of_a_prompt_without_facts_answered",
        "a cache of a prompt stored without facts is built (every key then missing) instead of refused",
        replace("queries/cache.py", "        require_facts(self._con, self.prompt_ids)\n", ""),
        (f"{STORE}::test_a_question_that_needs_facts_not_stored_is_refused_in_one_line",),
    ),
    Mutation(
        "killed_summaries_only_run_keeps_uncovered_prompts",
        "prompts of a killed summaries-only run that no flush covered stay stored, holding nothing",
        replace(WRITER, 'for table in ("tokens", "prompts"):', "for table in ():"),
        (f"{STORE}::test_a_killed_summaries_only_run_keeps_only_what_its_summaries_cover",),
    ),
    Mutation(
        "scan_of_a_sample_without_note",
        "a scan over prompts of which only some have facts answers without saying it read a sample",
        replace(
            "queries/node_scans.py",
            "            sample = sample_note(con, run_id)\n        return",
            "            sample = None\n        return",
        ),
        (f"{STORE}::test_facts_every_n_stores_the_facts_of_exactly_every_nth_prompt",),
    ),
    Mutation(
        "memory_budget_ignores_the_batches_the_writer_holds",
        "batches are sized to fit the budget alone, as if the writer held no earlier batch",
        replace(WORKER, "need.total + 2 * need.held <= budget", "need.total <= budget"),
        ("tests/test_memory.py",),
    ),
    Mutation(
        "rotary_partner_joined_in_a_nested_loop",
        "the rotary partner of a query or key channel is joined on a condition of the channel alone, a loop over "
        "every pair of rows (minutes for edges_from on a 5 MB warehouse)",
        replace(
            ATTN_EDGES,
            "THEN r.c + m.rot // 2 WHEN r.c < m.rot THEN r.c - m.rot // 2 END",
            "THEN r.c + m.rot // 2 ELSE r.c - m.rot // 2 END AND r.c < m.rot",
        ),
        ("tests/test_plans.py",),
    ),
    Mutation(
        "sae_readers_joined_in_a_nested_loop",
        "the SAEs after a write are joined on a condition of the reader column alone, a loop over every pair",
        replace(OUT_EDGES, "AND a.location = f.location", "AND f.location = 'autoencoder.to_latent'"),
        ("tests/test_plans.py",),
    ),
    Mutation(
        "union_streamed_without_materializing",
        "a query whose plan feeds DuckDB's streaming result from a UNION is streamed as it is: `actwh sql`, "
        "sql_reader and dashboards hang for ever on edges_into / edges_from past about 1 MB of rows",
        replace("queries/streaming.py", "if len(plans) != 1 or not _stalls(plans[0]):", "if True:"),
        ("tests/test_edge_streaming.py",),
    ),
    Mutation(
        "union_of_scans_materialized_before_streaming",
        "every UNION is streamed through a materialized CTE, the activations view too: `actwh sql` holds up to "
        "memory_limit before its first row",
        replace("queries/streaming.py", 'node["name"] == "UNION" and any(', 'node["name"] == "UNION" or any('),
        ("tests/test_sql_streaming.py",),
    ),
    Mutation(
        "attention_check_scanned_for_an_mlp_neuron",
        "the refusal's check for the value side's gradient scans facts whatever the question, so the edges into "
        "an MLP neuron open every facts file of the layer's range for it (0.3-0.4 s on 1000 prompts)",
        replace(ATTN_EDGES, "WHERE node_dst = 'attn_value'\n", "WHERE TRUE\n"),
        ("tests/test_plans.py",),
    ),
    Mutation(
        "mlp_check_scanned_for_an_attention_side",
        "the MLP neurons' refusal check for their pre-activations scans facts whatever the question, the edges "
        "into an attention head's value side too",
        replace(EDGES, "WHERE down_dst = 'mlp_post_act' AND dst = 'mlp_pre_act'", "WHERE dst = 'mlp_pre_act'"),
        ("tests/test_plans.py",),
    ),
    Mutation(
        "session_connection_shared_across_threads",
        "a Warehouse's session connection is seen by every thread: another thread's call runs on it while the "
        "session's own query streams, and a reader stops early without an error",
        replace("queries/api.py", "self._sessions = threading.local()", "self._sessions = type('S', (), {})()"),
        ("tests/test_api.py",),
    ),
    Mutation(
        "reader_on_the_session_connection",
        "sql_reader streams on the session's connection: a call made in the session meanwhile ends the "
        "reader's result, which stops early without an error",
        replace(
            "queries/api.py",
            "self._connection(own=True) as con, streaming.reader",
            "self._connection() as con, streaming.reader",
        ),
        ("tests/test_api.py",),
    ),
)


@dataclass
class Outcome:
    mutation: Mutation
    killed_by: list[str]
    error: str | None
    seconds: float

    @property
    def killed(self) -> bool:
        return self.error is None and bool(self.killed_by)


def tree_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    return [Path(p) for p in listed.split("\0") if p and (ROOT / p).is_file()]


def copy_tree(files: list[Path], dest: Path) -> None:
    for rel in files:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dest / rel)


def apply(edits: tuple[Edit, ...], tree: Path) -> str | None:
    """Apply the edits in order; the reason they cannot be applied, or None."""
    for edit in edits:
        path = tree / edit.path
        if not path.is_file():
            return f"{edit.path} does not exist"
        text = path.read_text()
        count = text.count(edit.old)
        if count != 1:
            where = "not found" if count == 0 else f"found {count} times"
            return f"snippet {edit.old.replace(chr(0), '')!r} {where} in {edit.path}"
        path.write_text(text.replace(edit.old, edit.new))
    return None


def run_tests(tree: Path, tests: tuple[str, ...], timeout: float) -> tuple[int, list[str], str]:
    """(pytest exit status, failed test ids, output tail) for the tests, run in `tree`."""
    report = tree / "junit.xml"
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    # -m "" lifts the default suite's `not slow` selection: a mutation names the tests that kill it, slow or not
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "", f"--junitxml={report}", *tests]
    try:
        proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, [], f"timed out after {timeout:.0f} s"
    failed = []
    if report.exists():
        for case in ET.parse(report).getroot().iter("testcase"):
            if case.find("failure") is not None or case.find("error") is not None:
                module = case.get("classname", "").rsplit(".", 1)[-1]
                failed.append(f"{module}::{case.get('name')}")
    return proc.returncode, failed, "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])


def check(mutation: Mutation, files: list[Path], scratch: Path, timeout: float) -> Outcome:
    start = time.monotonic()
    tree = Path(tempfile.mkdtemp(prefix=f"{mutation.name}-", dir=scratch))
    try:
        copy_tree(files, tree)
        problem = apply(mutation.edits, tree)
        if problem is not None:
            return Outcome(mutation, [], problem, time.monotonic() - start)
        code, failed, tail = run_tests(tree, mutation.tests, timeout)
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    error = None
    if code not in (0, 1) or (code == 1 and not failed):
        error = f"pytest exit {code}, tests did not run cleanly: {tail}"
    return Outcome(mutation, failed, error, time.monotonic() - start)


def compact(test_ids: list[str]) -> str:
    """test_views::test_x[gpt2], test_views::test_x[llama] -> test_views::test_x[gpt2, llama]."""
    grouped: dict[str, list[str]] = defaultdict(list)
    for test in test_ids:
        match = re.fullmatch(r"(.*?)(?:\[(.*)\])?", test)
        assert match is not None
        grouped[match[1]].append(match[2] or "")
    parts = []
    for name, params in grouped.items():
        shown = [p for p in params if p]
        parts.append(f"{name}[{', '.join(shown)}]" if shown else name)
    return "; ".join(parts)


def table(outcomes: list[Outcome]) -> str:
    lines = ["| mutation | bug | killed by | killed |", "|---|---|---|---|"]
    for o in outcomes:
        status = "yes" if o.killed else ("ERROR" if o.error else "NO")
        detail = o.error.splitlines()[0] if o.error else (compact(o.killed_by) or "nothing: it survived")
        lines.append(f"| `{o.mutation.name}` | {o.mutation.bug} | {detail} | {status} |")
    return "\n".join(lines)


def write_markdown(path: Path, body: str) -> None:
    text = path.read_text() if path.exists() else ""
    block = f"{TABLE_START}\n{body}\n{TABLE_END}"
    if TABLE_START in text and TABLE_END in text:
        text = text[: text.index(TABLE_START)] + block + text[text.index(TABLE_END) + len(TABLE_END) :]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + block + "\n"
    path.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="mutations to check (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--markdown", type=Path, help="rewrite the table between the mutation markers in this file")
    parser.add_argument("--skip-baseline", action="store_true", help="do not run the tests on the unmutated tree")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds per pytest run")
    args = parser.parse_args()

    known = {m.name: m for m in MUTATIONS}
    if args.list:
        for m in MUTATIONS:
            print(f"{m.name}: {m.bug}  [{', '.join(m.tests)}]")
        return 0
    unknown = [n for n in args.names if n not in known]
    if unknown:
        parser.error(f"unknown mutation {unknown[0]!r}: see --list")
    chosen = [known[n] for n in args.names] if args.names else list(MUTATIONS)

    files = tree_files()
    with tempfile.TemporaryDirectory(prefix="actwh-mutations-") as tmp:
        scratch = Path(tmp)
        if not args.skip_baseline:
            tests = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
            baseline = check(Mutation("baseline", "none", (), tests), files, scratch, args.timeout)
            if baseline.killed_by or baseline.error:
                print(f"the unmutated tree fails its tests: {baseline.error or compact(baseline.killed_by)}")
                return 2
            print(f"baseline: {len(tests)} test selections pass unmutated ({baseline.seconds:.0f} s)", flush=True)
        outcomes = []
        for mutation in chosen:
            outcome = check(mutation, files, scratch, args.timeout)
            status = "killed" if outcome.killed else ("ERROR" if outcome.error else "SURVIVED")
            print(f"{mutation.name}: {status} ({outcome.seconds:.0f} s)", flush=True)
            outcomes.append(outcome)
    body = table(outcomes)
    print()
    print(body)
    if args.markdown:
        write_markdown(args.markdown, body)
    return 0 if all(o.killed for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
