"""Every table the store writes, declared once: name, columns with DuckDB types, read order.

CREATE, INSERT and SELECT statements are generated from these declarations, readers return
exactly :attr:`Table.names` as columns, and the explorer's charts take their column lists from
here. Identifiers in generated SQL therefore only ever come from this module (checked when the
module loads); values always go through ``?``.

To store a new kind of rows, add one :class:`Table` below (and, if every run must have it
even when empty, list it in :data:`EVERY_RUN`); then write with
``RunWriter.write_rows(TABLE, rows)`` and read with ``RunReader.rows(TABLE, column=value)``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable

_IDENT = re.compile(r"^[a-z][a-z0-9_]*$")
_ORDER_TERM = re.compile(r"^([a-z][a-z0-9_]*)(?: (?:ASC|DESC))?(?: NULLS (?:FIRST|LAST))?$")
_TYPE = re.compile(r"^[A-Z][A-Z0-9 ]*$")


def where(columns: Iterable[str], **filters: Any) -> tuple[str, list]:
    """A ``WHERE`` clause and its parameters for ``column=value`` filters, in keyword order.

    ``None`` means no filter, a list or tuple means ``column IN (?, ...)`` (an empty one
    matches nothing), anything else ``column = ?``. Column names must be among ``columns``
    (declared identifiers), so no caller-supplied text ever reaches the SQL.
    """
    allowed = set(columns)
    conditions, params = [], []
    for column, value in filters.items():
        if column not in allowed:
            raise ValueError(f"cannot filter on {column!r}: not one of {sorted(allowed)}")
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            if not value:
                conditions.append("FALSE")
                continue
            conditions.append(f"{column} IN ({', '.join('?' for _ in value)})")
            params.extend(value)
        else:
            conditions.append(f"{column} = ?")
            params.append(value)
    return ("WHERE " + " AND ".join(conditions)) if conditions else "", params


@dataclass(frozen=True)
class Table:
    """One table: ``columns`` are ``(name, DuckDB type)`` pairs, ``order_by`` the read order."""

    name: str
    columns: tuple[tuple[str, str], ...]
    order_by: str = ""
    what: str = ""  # words for error messages ("tap weights"); defaults to the name

    def __post_init__(self) -> None:
        bad = [n for n in (self.name, *self.names) if not _IDENT.match(n)]
        bad += [t for _, t in self.columns if not _TYPE.match(t)]
        for term in filter(None, (t.strip() for t in self.order_by.split(","))):
            m = _ORDER_TERM.match(term)
            if not m or m.group(1) not in self.names:
                bad.append(term)
        if bad:
            raise ValueError(f"table {self.name!r}: invalid identifiers or types {bad}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.columns)

    @property
    def label(self) -> str:
        return self.what or self.name.replace("_", " ")

    def pick(self, *names: str) -> tuple[str, ...]:
        """``names``, checked to be columns of this table (for consumers such as charts)."""
        missing = [n for n in names if n not in self.names]
        if missing:
            raise ValueError(f"table {self.name!r} has no column(s) {missing}")
        return names

    def create(self) -> str:
        cols = ",\n    ".join(f"{name} {kind}" for name, kind in self.columns)
        return f"CREATE TABLE IF NOT EXISTS {self.name} (\n    {cols}\n)"

    def insert(self, names: Iterable[str] | None = None) -> str:
        names = self.names if names is None else self.pick(*names)
        return f"INSERT INTO {self.name} ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)})"

    def select(self, where_sql: str = "", stored: Iterable[str] | None = None) -> str:
        """``where_sql`` must come from :func:`where` (or :meth:`where`).

        ``stored`` names the columns the stored table really has (an older run's may lack some):
        each missing column with a :data:`LEGACY_DEFAULTS` entry is read as that value, through
        one ``?`` parameter per missing column, in declared order, *before* ``where_sql``'s.
        """
        order = f" ORDER BY {self.order_by}" if self.order_by else ""
        source = self.name
        if stored is not None and self.legacy_missing(stored):
            have = set(stored)
            cols = ", ".join(n if n in have else f"? AS {n}" for n in self.names)
            source = f"(SELECT {cols} FROM {self.name}) AS {self.name}"
        return f"SELECT {', '.join(self.names)} FROM {source} {where_sql}".rstrip() + order

    def legacy_missing(self, stored: Iterable[str]) -> list[str]:
        """Declared columns absent from ``stored``, in declared order; an error where one of them
        has no documented default (the run cannot be read as this table)."""
        have = set(stored)
        missing = [n for n in self.names if n not in have]
        unknown = [n for n in missing if (self.name, n) not in LEGACY_DEFAULTS]
        if unknown:
            raise ValueError(f"table {self.name!r} lacks column(s) {unknown}, which have no default for old runs")
        return missing

    def legacy_params(self, stored: Iterable[str]) -> list:
        """The parameters :meth:`select` needs for ``stored`` (the defaults of missing columns)."""
        return [LEGACY_DEFAULTS[(self.name, n)] for n in self.legacy_missing(stored)]

    def delete_all(self) -> str:
        return f"DELETE FROM {self.name}"

    def where(self, **filters: Any) -> tuple[str, list]:
        return where(self.names, **filters)


# --------------------------------------------------------------------------- schema versions

#: The layout every new catalog and run is written in, recorded in the catalog's
#: ``catalog_meta`` and each run's ``run_meta`` under ``schema_version``. Version 1 is
#: everything written before versions were recorded (no ``schema_version`` key): its analysis
#: tables have no ``representation`` column. Version 2 adds that column.
SCHEMA_VERSION = 2
#: How an older run's missing column is read, per (table, column): analyses made before
#: representations existed compared the states as captured, i.e. the ``raw`` representation.
LEGACY_DEFAULTS: dict[tuple[str, str], Any] = {
    ("similarity", "representation"): "raw",
    ("trajectories", "representation"): "raw",
    ("pca_variance", "representation"): "raw",
}
LEGACY_TABLES = frozenset(name for name, _ in LEGACY_DEFAULTS)

# --------------------------------------------------------------------------- the catalog

# config/summary are JSON text in VARCHAR columns rather than DuckDB's JSON type, so that
# reading the catalog never depends on the json extension being loadable.
RUNS = Table("runs", (
    ("run_id", "VARCHAR PRIMARY KEY"), ("kind", "VARCHAR NOT NULL"), ("status", "VARCHAR NOT NULL"),
    ("created", "TIMESTAMP NOT NULL"), ("finished", "TIMESTAMP"), ("model", "VARCHAR"),
    ("dataset", "VARCHAR"), ("config", "VARCHAR"), ("summary", "VARCHAR"), ("error", "VARCHAR"),
    ("parent", "VARCHAR"), ("host", "VARCHAR"), ("pid", "INTEGER"), ("progress", "DOUBLE"),
), order_by="created DESC, run_id DESC")  # fmt: skip

# Key/value facts about the catalog itself (its schema_version).
CATALOG_META = Table("catalog_meta", (("key", "VARCHAR PRIMARY KEY"), ("value", "VARCHAR")))

# --------------------------------------------------------------------------- every run

RUN_META = Table("run_meta", (("key", "VARCHAR PRIMARY KEY"), ("value", "VARCHAR")))
METRICS = Table("metrics", (
    ("step", "INTEGER"), ("split", "VARCHAR"), ("name", "VARCHAR"), ("value", "DOUBLE"), ("time", "TIMESTAMP"),
), order_by="step, name, split")  # fmt: skip
# Training series: which skip distance each block prefers, and per-head gate alphas.
TAP_WEIGHTS = Table("tap_weights", (
    ("step", "INTEGER"), ("layer", "INTEGER"), ("distance", "INTEGER"), ("weight", "DOUBLE"),
), order_by="step, layer, distance")  # fmt: skip
GATE_ALPHAS = Table("gate_alphas", (
    ("step", "INTEGER"), ("layer", "INTEGER"), ("head", "INTEGER"), ("alpha", "DOUBLE"),
), order_by="step, layer, head")  # fmt: skip

# --------------------------------------------------------------------------- sweep runs

# One row per config (statistics over seeds) and one per trained run.
SWEEP_CONFIGS = Table("sweep_configs", (
    ("config_key", "VARCHAR"), ("label", "VARCHAR"), ("distances", "VARCHAR"), ("alpha", "DOUBLE"),
    ("variant", "VARCHAR"), ("n", "INTEGER"), ("failed", "INTEGER"), ("mean", "DOUBLE"), ("std", "DOUBLE"),
    ("ci_low", "DOUBLE"), ("ci_high", "DOUBLE"), ("best", "BOOLEAN"), ("n_paired", "INTEGER"),
    ("p_vs_best", "DOUBLE"), ("mean_skip_loss", "DOUBLE"), ("mean_base_loss", "DOUBLE"),
), order_by="mean DESC NULLS LAST")  # fmt: skip
SWEEP_RUNS = Table("sweep_runs", (
    ("run_id", "VARCHAR"), ("config_key", "VARCHAR"), ("label", "VARCHAR"), ("seed", "INTEGER"),
    ("state", "VARCHAR"), ("error", "VARCHAR"), ("base_loss", "DOUBLE"), ("skip_loss", "DOUBLE"),
    ("improvement_pct", "DOUBLE"),
), order_by="label, seed")  # fmt: skip

# --------------------------------------------------------------------------- dose runs

# One row per continuation, plus per-token and per-layer entropies.
GENERATIONS = Table("generations", (
    ("gen_id", "INTEGER"), ("prompt_line", "INTEGER"), ("prompt", "VARCHAR"), ("intensity", "DOUBLE"),
    ("seed", "INTEGER"), ("mechanisms", "VARCHAR"), ("text", "VARCHAR"), ("n_tokens", "INTEGER"),
    ("mean_entropy", "DOUBLE"), ("stopped", "BOOLEAN"),
), order_by="prompt_line, seed, intensity")  # fmt: skip
TOKEN_ENTROPY = Table("token_entropy", (
    ("gen_id", "INTEGER"), ("pos", "INTEGER"), ("token_id", "INTEGER"), ("token_text", "VARCHAR"),
    ("entropy", "DOUBLE"),
), order_by="gen_id, pos")  # fmt: skip
LAYER_ENTROPY = Table("layer_entropy", (
    ("gen_id", "INTEGER"), ("pos", "INTEGER"), ("layer", "INTEGER"), ("entropy", "DOUBLE"),
), order_by="gen_id, pos, layer")  # fmt: skip

# Bio-inspired interventions of a dose run (only where some row used one): each generation's
# strengths, per layer and head its fatigue pool level (mean over keys) and the pool level of
# the keys the head attends to, and per layer its fast-weight norm (all averaged over its
# generated tokens).
BIO_STRENGTHS = Table("bio_strengths", (
    ("gen_id", "INTEGER"), ("fatigue", "DOUBLE"), ("hebbian", "DOUBLE"),
), order_by="gen_id", what="bio strengths")  # fmt: skip
BIO_POOL = Table("bio_pool", (
    ("gen_id", "INTEGER"), ("layer", "INTEGER"), ("head", "INTEGER"), ("level", "DOUBLE"), ("attended", "DOUBLE"),
), order_by="gen_id, layer, head", what="fatigue pool levels")  # fmt: skip
BIO_FAST_NORM = Table("bio_fast_norm", (
    ("gen_id", "INTEGER"), ("layer", "INTEGER"), ("norm", "DOUBLE"),
), order_by="gen_id, layer", what="fast-weight norms")  # fmt: skip

# --------------------------------------------------------------------------- bio evaluation runs

# Next-token loss (nats) and entropy (bits) per corpus window, sober and each mechanism/strength.
BIO_EVAL = Table("bio_eval", (
    ("corpus", "VARCHAR"), ("window_idx", "INTEGER"), ("mechanism", "VARCHAR"), ("strength", "DOUBLE"),
    ("loss", "DOUBLE"), ("entropy", "DOUBLE"),
), order_by="corpus, mechanism, strength, window_idx", what="bio evaluation")  # fmt: skip

# --------------------------------------------------------------------------- capture runs

# Which tokens were kept; the activations themselves live in Parquet files (matrices.py).
CAPTURE_TOKENS = Table("capture_tokens", (
    ("token_idx", "INTEGER"), ("seq", "INTEGER"), ("pos", "INTEGER"), ("token_id", "INTEGER"),
    ("token_text", "VARCHAR"),
), order_by="token_idx")  # fmt: skip
# The outlier diagnostic, computed while capturing: per side and layer the token-norm
# distribution, every token above the threshold (SINK_RATIO x the layer's median norm), and the
# dimensions that hold most of those tokens' squared norm.
NORM_STATS = Table("norm_stats", (
    ("side", "VARCHAR"), ("layer", "INTEGER"), ("median", "DOUBLE"), ("p99", "DOUBLE"), ("max", "DOUBLE"),
    ("threshold", "DOUBLE"), ("n_over", "INTEGER"),
), order_by="side, layer", what="token norm statistics")  # fmt: skip
NORM_OUTLIERS = Table("norm_outliers", (
    ("side", "VARCHAR"), ("layer", "INTEGER"), ("token_idx", "INTEGER"), ("norm", "DOUBLE"), ("ratio", "DOUBLE"),
), order_by="side, layer, token_idx", what="outlier tokens")  # fmt: skip
OUTLIER_DIMS = Table("outlier_dims", (
    ("side", "VARCHAR"), ("layer", "INTEGER"), ("rank", "INTEGER"), ("dim", "INTEGER"), ("share", "DOUBLE"),
), order_by="side, layer, rank", what="outlier dimensions")  # fmt: skip

# Corpus-level lens and attention summaries (psilonet.analysis.capture_lens), per side: per state
# (0 = embeddings) the mean KL to the final layer (nats), the next token's mean and median rank
# (1 = top), the share of positions whose top-1 is the final top-1 and the mean entropy (nats);
# per block, tap ("base" or the skip distance) and head the attention entropy (nats), share on
# window position 0 and mean distance back; and the first window's layer x position grid. That
# window's attention patterns are a Parquet file of the run (capture_lens.PATTERNS_FILE).
LENS_SUMMARY = Table("lens_summary", (
    ("side", "VARCHAR"), ("layer", "INTEGER"), ("positions", "INTEGER"), ("kl_final", "DOUBLE"),
    ("rank_mean", "DOUBLE"), ("rank_median", "DOUBLE"), ("top1_final", "DOUBLE"), ("entropy", "DOUBLE"),
), order_by="side, layer", what="lens summaries")  # fmt: skip
ATTENTION_SUMMARY = Table("attention_summary", (
    ("side", "VARCHAR"), ("tap", "VARCHAR"), ("layer", "INTEGER"), ("head", "INTEGER"), ("entropy", "DOUBLE"),
    ("sink", "DOUBLE"), ("distance", "DOUBLE"),
), order_by="side, tap, layer, head", what="attention summaries")  # fmt: skip
LENS_GRID = Table("lens_grid", (
    ("side", "VARCHAR"), ("layer", "INTEGER"), ("pos", "INTEGER"), ("token_text", "VARCHAR"), ("top1", "VARCHAR"),
    ("p_top1", "DOUBLE"), ("kl_final", "DOUBLE"), ("rank_next", "INTEGER"), ("entropy", "DOUBLE"),
), order_by="side, layer, pos", what="lens grid")  # fmt: skip

# --------------------------------------------------------------------------- analysis runs

# Every similarity number keyed by source run, metric, layer(s) and head.
SIMILARITY = Table("similarity", (
    ("source", "VARCHAR"), ("dataset", "VARCHAR"), ("view", "VARCHAR"), ("metric", "VARCHAR"),
    ("layer", "INTEGER"), ("layer_b", "INTEGER"), ("head", "INTEGER"), ("value", "DOUBLE"),
    ("representation", "VARCHAR"),
), order_by="source, representation, view, metric, layer, layer_b, head")  # fmt: skip
TRAJECTORIES = Table("trajectories", (
    ("source", "VARCHAR"), ("side", "VARCHAR"), ("unit", "VARCHAR"), ("unit_id", "INTEGER"),
    ("label", "VARCHAR"), ("layer", "INTEGER"), ("pc1", "DOUBLE"), ("pc2", "DOUBLE"),
    ("representation", "VARCHAR"),
), order_by="source, representation, side, unit, unit_id, layer")  # fmt: skip
PCA_VARIANCE = Table("pca_variance", (
    ("source", "VARCHAR"), ("component", "INTEGER"), ("ratio", "DOUBLE"), ("representation", "VARCHAR"),
), order_by="source, representation, component", what="explained variance")  # fmt: skip
# The tokens the no-sink representation dropped from each source (at every layer): each one's
# position, text, at how many layers it was an outlier (first..last) and its largest norm ratio.
SINK_TOKENS = Table("sink_tokens", (
    ("source", "VARCHAR"), ("token_idx", "INTEGER"), ("seq", "INTEGER"), ("pos", "INTEGER"),
    ("token_text", "VARCHAR"), ("first_layer", "INTEGER"), ("last_layer", "INTEGER"),
    ("n_layers", "INTEGER"), ("max_ratio", "DOUBLE"),
), order_by="source, token_idx", what="sink tokens")  # fmt: skip

#: Created in every run's database when it is begun, so reading them never fails on an old
#: or foreign run; the others appear with their first write.
EVERY_RUN = (RUN_META, METRICS, TAP_WEIGHTS, GATE_ALPHAS)
#: Tables indexed by training step, cut back when a killed job resumes.
STEP_TABLES = (METRICS, TAP_WEIGHTS, GATE_ALPHAS)

# --------------------------------------------------------------------------- ablation runs

# Loss (nats) of each held-out window with one skip component off ("none off": the trained
# model, "all off": every skip block off), and per component the paired difference with "none
# off" over windows (Student-t 95% CI), its rank, and the weight training learned for it.
ABLATION_LOSS = Table("ablation_loss", (
    ("component", "VARCHAR"), ("window_idx", "INTEGER"), ("loss", "DOUBLE"),
), order_by="component, window_idx", what="ablation losses")  # fmt: skip
ABLATION = Table("ablation", (
    ("component", "VARCHAR"), ("kind", "VARCHAR"), ("layer", "INTEGER"), ("distance", "INTEGER"),
    ("head", "INTEGER"), ("n", "INTEGER"), ("loss", "DOUBLE"), ("delta_loss", "DOUBLE"), ("ci_low", "DOUBLE"),
    ("ci_high", "DOUBLE"), ("learned", "DOUBLE"), ("rank", "INTEGER"),
), order_by="rank NULLS FIRST, component", what="ablations")  # fmt: skip

# --------------------------------------------------------------------------- steering runs

# The steering vector (difference of means at ``layer``), each generation's steering strength
# (its intensity is in ``generations``), and the teacher-forced cost of each row on corpus
# windows: next-token loss (nats) and entropy (bits), steered rows beside entropic doses.
STEERING_VECTOR = Table("steering_vector", (
    ("layer", "INTEGER"), ("dim", "INTEGER"), ("value", "DOUBLE"),
), order_by="layer, dim", what="steering vector")  # fmt: skip
STEERING_ROWS = Table("steering_rows", (
    ("gen_id", "INTEGER"), ("strength", "DOUBLE"),
), order_by="gen_id", what="steering strengths")  # fmt: skip
STEERING_COST = Table("steering_cost", (
    ("mechanism", "VARCHAR"), ("strength", "DOUBLE"), ("loss", "DOUBLE"), ("entropy", "DOUBLE"),
), order_by="mechanism, strength", what="steering cost")  # fmt: skip
