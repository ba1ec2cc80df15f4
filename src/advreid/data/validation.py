"""Great Expectations validation of dataset manifests, with reports a person can read.

Every rule is a GX Core 1.x expectation, so every failure (which rows, how many) comes from GX. The
manifest frame (all splits of one dataset) is validated as one batch; the class-balance rule needs
per-(split, class) counts, which no GX expectation computes, so those counts are tabulated with pandas
and validated by GX as a second, small batch. Both land in one :class:`ValidationReport`.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from advreid.data.manifest import CORE_NAMES, ManifestError
from advreid.errors import BadInputError
from advreid.io import write_json, write_text
from advreid.settings import QUIET_DEFAULTS

KINDS = ("reid", "classification")
EXAMPLE_COLUMNS = ("path", "split", "label", "camera")
COUNT_COLUMNS = ("split", "label", "count")
MAX_EXAMPLES = 5
SHA256_REGEX = "^[0-9a-f]{64}$"
JUNK_LABEL = -1  # Re-ID junk images (Market-1501 convention): gallery only
_LIST_PREVIEW = 10  # kwargs lists longer than this are shortened in reports


@dataclass(frozen=True)
class ManifestRules:
    """What a dataset's manifest must satisfy; built by the caller from the dataset's declaration.

    Attributes:
        kind: ``"reid"`` or ``"classification"``.
        label_range: inclusive (low, high) for every label; for Re-ID the junk label -1 is exempt,
            and allowed in the gallery only.
        camera_range: inclusive camera ids for Re-ID; None for classification (camera must be -1).
        splits: allowed split values.
        image_size: (height, width) every image must have; None = any size of at least ``min_size``.
        min_size: (height, width) lower bound used when ``image_size`` is None.
        num_classes: classification only: labels in 0..num_classes-1 and class balance per split checked.
        balance_tolerance: per split, every class count must lie within (1 ± tol) x the split's mean count.
    """

    kind: str
    label_range: tuple[int, int]
    camera_range: tuple[int, int] | None
    splits: tuple[str, ...]
    image_size: tuple[int, int] | None
    min_size: tuple[int, int] = (8, 4)
    num_classes: int | None = None
    balance_tolerance: float = 0.5

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"ManifestRules.kind must be one of {KINDS}, not {self.kind!r}")
        _check_range("label_range", self.label_range)
        if self.kind == "reid" and self.camera_range is None:
            raise ValueError("ManifestRules.camera_range is required for kind 'reid'")
        if self.kind == "classification" and self.camera_range is not None:
            raise ValueError("ManifestRules.camera_range must be None for kind 'classification' (camera is -1)")
        if self.camera_range is not None:
            _check_range("camera_range", self.camera_range)
        if not self.splits or not all(isinstance(s, str) and s for s in self.splits):
            raise ValueError(f"ManifestRules.splits must be a non-empty tuple of split names, got {self.splits!r}")
        for attr in ("image_size", "min_size"):
            size = getattr(self, attr)
            if size is not None and (len(size) != 2 or min(size) < 1):
                raise ValueError(f"ManifestRules.{attr} must be (height, width) with both >= 1, got {size!r}")
        if self.num_classes is not None:
            if self.kind != "classification":
                raise ValueError("ManifestRules.num_classes applies to kind 'classification' only")
            if self.num_classes < 1:
                raise ValueError(f"ManifestRules.num_classes must be >= 1, got {self.num_classes}")
        if not self.balance_tolerance >= 0:
            raise ValueError(f"ManifestRules.balance_tolerance must be >= 0, got {self.balance_tolerance}")


def _check_range(name: str, bounds: tuple[int, int]) -> None:
    if len(bounds) != 2 or bounds[0] > bounds[1]:
        raise ValueError(f"ManifestRules.{name} must be (low, high) with low <= high, got {bounds!r}")


@dataclass(frozen=True)
class ExpectationOutcome:
    """One GX expectation's result, reduced to what a reader needs.

    Attributes:
        expectation: GX expectation type, e.g. ``expect_column_values_to_be_unique``.
        column: the column checked.
        description: the rule in words.
        kwargs: the expectation's parameters (long value sets shortened, row conditions as text).
        success: whether the expectation held.
        unexpected_count: rows (or count-table entries) that broke it.
        element_count: rows it was evaluated on (after its row condition).
        examples: up to five offending rows: path, split, label, camera and the offending value.
        batch: ``"manifest"`` for the manifest rows, ``"class_counts"`` for the per-class count table.
        error: the exception message where GX could not evaluate the expectation.
        observed_value: what a table-level expectation measured (e.g. the row count), else None.
    """

    expectation: str
    column: str | None
    description: str
    kwargs: dict[str, Any]
    success: bool
    unexpected_count: int
    element_count: int
    examples: list[dict[str, Any]] = field(default_factory=list)
    batch: str = "manifest"
    error: str | None = None
    observed_value: Any = None

    def headline(self) -> str:
        """One line: the rule, its column, and how many rows broke it."""
        where = f" [{self.kwargs['row_condition']}]" if "row_condition" in self.kwargs else ""
        if self.error:
            outcome = f"could not be evaluated: {self.error}"
        elif self.observed_value is not None:
            outcome = f"observed {self.observed_value}"
        else:
            outcome = f"{self.unexpected_count} of {self.element_count} {_unit(self.batch)} unexpected"
        return f"{self.expectation}({self.column}){where} - {self.description}: {outcome}"


@dataclass
class ValidationReport:
    """All expectation outcomes for one dataset's manifest."""

    name: str
    success: bool
    results: list[ExpectationOutcome]

    @property
    def failures(self) -> list[ExpectationOutcome]:
        return [r for r in self.results if not r.success]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "success": self.success,
            "evaluated": len(self.results),
            "failed": len(self.failures),
            "results": [asdict(r) for r in self.results],
        }

    def summary(self) -> str:
        """Which expectations failed, how many rows, and example rows (plain text)."""
        if self.success:
            return f"manifest {self.name!r}: all {len(self.results)} expectations passed"
        lines = [f"manifest {self.name!r}: {len(self.failures)} of {len(self.results)} expectations failed"]
        for outcome in self.failures:
            lines.append(f"- {outcome.headline()}")
            lines += [f"    e.g. {_format_row(row)}" for row in outcome.examples]
        return "\n".join(lines)

    def to_markdown(self) -> str:
        verdict = "PASSED" if self.success else f"FAILED ({len(self.failures)} of {len(self.results)})"
        lines = [
            f"# Manifest validation: {self.name}",
            "",
            f"**{verdict}** - {len(self.results)} Great Expectations checks.",
            "",
            "| # | result | rule | expectation | column | parameters | unexpected | evaluated |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for i, r in enumerate(self.results, 1):
            result = "pass" if r.success else ("**ERROR**" if r.error else "**FAIL**")
            params = ", ".join(f"{k}={_md(v)}" for k, v in r.kwargs.items())
            if r.observed_value is not None:  # table-level: a measured value, not rows
                counts = f"- | observed {_md(r.observed_value)}"
            else:
                counts = f"{r.unexpected_count} | {r.element_count} {_unit(r.batch)}"
            column = f"`{r.column}`" if r.column else "-"
            rule = _md(r.description)
            lines.append(f"| {i} | {result} | {rule} | `{r.expectation}` | {column} | {params} | {counts} |")
        for r in self.failures:
            where = f" where `{r.kwargs['row_condition']}`" if "row_condition" in r.kwargs else ""
            lines += ["", f"## {r.description}", "", f"`{r.expectation}` on `{r.column}`{where}: "]
            if r.error:
                lines[-1] += f"could not be evaluated: {_md(r.error)}"
            elif r.observed_value is not None:
                lines[-1] += f"observed {_md(r.observed_value)}."
            else:
                lines[-1] += f"{r.unexpected_count} of {r.element_count} {_unit(r.batch)} unexpected."
            if r.examples:
                columns = list(dict.fromkeys(c for row in r.examples for c in row))
                lines += [
                    "",
                    f"First {len(r.examples)} offending {_unit(r.batch)}:",
                    "",
                    "| " + " | ".join(columns) + " |",
                    "|" + "---|" * len(columns),
                ]
                lines += ["| " + " | ".join(_md(row.get(c)) for c in columns) + " |" for row in r.examples]
        return "\n".join(lines) + "\n"


class ValidationFailed(BadInputError, ValueError):
    """A manifest broke its expectations; ``report`` holds every outcome, ``str()`` sums up the failures."""

    def __init__(self, report: ValidationReport, report_paths: tuple[Path, Path] | None = None) -> None:
        self.report = report
        self.report_paths = report_paths
        message = report.summary()
        if report_paths is not None:
            message += f"\nfull report: {report_paths[1]}"
        super().__init__(message)


def validate_manifest(frame: pd.DataFrame, rules: ManifestRules, name: str) -> ValidationReport:
    """Validate all splits of one dataset's manifest against ``rules`` with Great Expectations.

    Args:
        frame: every split of one dataset concatenated; at least the core manifest columns.
        rules: what the dataset declares (kind, ranges, splits, sizes, classes).
        name: dataset name, used in the report.

    Raises:
        ManifestError: when a core column is missing (nothing can be validated without it).
    """
    missing = [c for c in CORE_NAMES if c not in frame.columns]
    if missing:
        raise ManifestError(f"{name}: manifest lacks column(s) {missing}; cannot validate it")
    frame = frame.reset_index(drop=True)  # GX reports rows by index; concatenated splits repeat it
    gx = _gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    # A fresh in-memory context per call costs milliseconds and keeps calls independent.
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas(f"{name}_manifest")

    results = _run(source, "manifest", frame, _manifest_expectations(frame, rules), EXAMPLE_COLUMNS)
    if rules.num_classes is not None:
        counts = class_counts(frame, rules.num_classes)
        expectations = _balance_expectations(rules.balance_tolerance)
        results += _run(source, "class_counts", counts, expectations, COUNT_COLUMNS)
    return ValidationReport(name=name, success=all(r.success for r in results), results=results)


def class_counts(frame: pd.DataFrame, num_classes: int) -> pd.DataFrame:
    """Per split, how many rows each class 0..num_classes-1 has, and that count over the split's mean.

    Absent classes get count 0. Labels outside the class range (reported by the row-level label check)
    are left out, as are rows with a null split or label.

    Returns:
        columns split, label, count, count_ratio (count / (in-range rows of the split / num_classes)).
    """
    labels = pd.to_numeric(frame["label"], errors="coerce")
    keep = frame["split"].notna() & labels.between(0, num_classes - 1)
    rows = pd.DataFrame({"split": frame.loc[keep, "split"].astype(str), "label": labels[keep].astype("int64")})
    splits = sorted(rows["split"].unique())
    full = pd.MultiIndex.from_product([splits, range(num_classes)], names=["split", "label"])
    counts = rows.groupby(["split", "label"]).size().reindex(full, fill_value=0).rename("count").reset_index()
    mean = counts.groupby("split")["count"].transform("sum") / num_classes
    counts["count_ratio"] = counts["count"] / mean
    return counts


def write_report(report: ValidationReport, directory: Path) -> tuple[Path, Path]:
    """Write ``<name>.json`` and ``<name>.md`` atomically into ``directory``; return both paths."""
    if not report.name or any(ch in report.name for ch in "/\\") or report.name.startswith("."):
        raise ValueError(f"report name {report.name!r} is not usable as a file name")
    directory = Path(directory)
    json_path, md_path = directory / f"{report.name}.json", directory / f"{report.name}.md"
    write_json(json_path, report.to_dict())
    write_text(md_path, report.to_markdown())
    return json_path, md_path


def check(frame: pd.DataFrame, rules: ManifestRules, name: str, report_dir: Path) -> ValidationReport:
    """Validate, write the report whether it passed or not, and raise :class:`ValidationFailed` on failure."""
    report = validate_manifest(frame, rules, name)
    paths = write_report(report, report_dir)
    if not report.success:
        raise ValidationFailed(report, paths)
    return report


def _gx() -> Any:
    """Import GX lazily (about 3 s) with its analytics off, which it reads at import time."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", QUIET_DEFAULTS["GX_ANALYTICS_ENABLED"])
    import great_expectations as gx

    return gx


def _manifest_expectations(frame: pd.DataFrame, rules: ManifestRules) -> list[Any]:
    """The row-level rules for the manifest batch, in report order."""
    gxe = _gx().expectations
    from great_expectations.expectations.row_conditions import Column

    out: list[Any] = [gxe.ExpectTableRowCountToBeBetween(min_value=1, description="the manifest has rows")]
    out += [gxe.ExpectColumnValuesToNotBeNull(column=c, description=f"{c} is never null") for c in CORE_NAMES]
    out += [
        gxe.ExpectColumnValuesToBeInSet(
            column="split", value_set=list(rules.splits), description="split is one of the declared splits"
        ),
        gxe.ExpectColumnValuesToBeUnique(column="path", description="every path appears once"),
        gxe.ExpectColumnValuesToMatchRegex(
            column="sha256", regex=SHA256_REGEX, description="sha256 is 64 lowercase hex digits"
        ),
    ]
    for column, axis in (("height", 0), ("width", 1)):
        if rules.image_size is not None:
            size = rules.image_size[axis]
            out.append(
                gxe.ExpectColumnValuesToBeInSet(
                    column=column, value_set=[size], description=f"every image has {column} {size}"
                )
            )
        else:
            low = rules.min_size[axis]
            out.append(
                gxe.ExpectColumnValuesToBeBetween(
                    column=column, min_value=low, description=f"every image has {column} >= {low}"
                )
            )
    low, high = rules.label_range
    if rules.kind == "reid":
        out += [
            gxe.ExpectColumnValuesToBeBetween(
                column="label",
                min_value=low,
                max_value=high,
                row_condition=Column("label") != JUNK_LABEL,
                description=f"label (other than junk {JUNK_LABEL}) is within {low}..{high}",
            ),
            gxe.ExpectColumnValuesToNotBeInSet(
                column="label",
                value_set=[JUNK_LABEL],
                row_condition=Column("split") != "gallery",
                description=f"junk label {JUNK_LABEL} appears in the gallery only",
            ),
            gxe.ExpectColumnValuesToBeBetween(
                column="camera",
                min_value=rules.camera_range[0],
                max_value=rules.camera_range[1],
                description=f"camera is within {rules.camera_range[0]}..{rules.camera_range[1]}",
            ),
            gxe.ExpectColumnValuesToBeInSet(
                column="label",
                value_set=_gallery_labels(frame),
                row_condition=Column("split") == "query",
                description="every query id is present in the gallery",
            ),
        ]
    else:
        out.append(
            gxe.ExpectColumnValuesToBeBetween(
                column="label", min_value=low, max_value=high, description=f"label is within {low}..{high}"
            )
        )
        if rules.num_classes is not None and rules.label_range != (0, rules.num_classes - 1):
            top = rules.num_classes - 1
            out.append(
                gxe.ExpectColumnValuesToBeBetween(
                    column="label", min_value=0, max_value=top, description=f"label is a class id 0..{top}"
                )
            )
        out.append(
            gxe.ExpectColumnValuesToBeInSet(
                column="camera", value_set=[-1], description="camera is -1 (no cameras in classification)"
            )
        )
    return out


def _balance_expectations(tolerance: float) -> list[Any]:
    gxe = _gx().expectations
    low, high = 1.0 - tolerance, 1.0 + tolerance
    return [
        gxe.ExpectColumnValuesToBeBetween(
            column="count_ratio",
            min_value=low,
            max_value=high,
            description=f"per split, every class count is within {low:g}..{high:g} x the mean class count",
        )
    ]


def _gallery_labels(frame: pd.DataFrame) -> list[int]:
    labels = pd.to_numeric(frame.loc[frame["split"] == "gallery", "label"], errors="coerce").dropna()
    return sorted(int(v) for v in labels.unique() if v != JUNK_LABEL)


def _run(
    source: Any, batch: str, frame: pd.DataFrame, expectations: list[Any], index_columns: tuple[str, ...]
) -> list[ExpectationOutcome]:
    """Validate ``frame`` against ``expectations`` as one GX batch; outcomes in the order given."""
    gx = _gx()
    suite = gx.ExpectationSuite(name=f"{source.name}_{batch}")
    for position, expectation in enumerate(expectations):
        # GX returns results grouped by metric, not in suite order; the position restores the order.
        expectation.meta = {"position": position}
        suite.add_expectation(expectation)
    definition = source.add_dataframe_asset(batch).add_batch_definition_whole_dataframe(batch)
    result_format = {
        "result_format": "SUMMARY",
        "partial_unexpected_count": MAX_EXAMPLES,
        "unexpected_index_column_names": list(index_columns),
    }
    validation = definition.get_batch(batch_parameters={"dataframe": frame}).validate(
        suite, result_format=result_format
    )
    raw = sorted(validation.to_json_dict()["results"], key=lambda r: r["expectation_config"]["meta"]["position"])
    return [_outcome(r, batch, index_columns) for r in raw]


def _outcome(raw: dict[str, Any], batch: str, index_columns: tuple[str, ...]) -> ExpectationOutcome:
    config, result = raw["expectation_config"], raw.get("result") or {}
    kwargs = {
        key: _summarise(key, value)
        for key, value in config["kwargs"].items()
        if key not in ("batch_id", "column") and value is not None
    }
    return ExpectationOutcome(
        expectation=config["type"],
        column=config["kwargs"].get("column"),
        description=config.get("description") or config["type"],
        kwargs=kwargs,
        success=bool(raw["success"]),
        unexpected_count=int(result.get("unexpected_count") or 0),
        element_count=int(result.get("element_count") or 0),
        examples=[
            _ordered(row, index_columns) for row in (result.get("partial_unexpected_index_list") or [])[:MAX_EXAMPLES]
        ],
        batch=batch,
        error=_error_message(raw.get("exception_info") or {}),
        observed_value=result.get("observed_value"),
    )


def _ordered(row: dict[str, Any], index_columns: tuple[str, ...]) -> dict[str, Any]:
    """Identifying columns first, then the offending value."""
    first = [c for c in index_columns if c in row]
    return {c: row[c] for c in first + [c for c in row if c not in first]}


def _error_message(info: dict[str, Any]) -> str | None:
    # GX gives {"raised_exception": ...} for one failure, or one such dict per failed metric.
    entries = [info] if "raised_exception" in info or "exception_message" in info else list(info.values())
    messages = [e.get("exception_message") for e in entries if isinstance(e, dict)]
    messages = [m for m in messages if m]
    return "; ".join(dict.fromkeys(messages)) or None


def _summarise(key: str, value: Any) -> Any:
    if key == "row_condition" and isinstance(value, dict) and "column" in value:
        column = value["column"]["name"] if isinstance(value["column"], dict) else value["column"]
        return f"{column} {value.get('operator')} {value.get('parameter')!r}"
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list) and len(value) > _LIST_PREVIEW:
        head = ", ".join(repr(v) for v in value[:_LIST_PREVIEW])
        return f"[{head}, ... ({len(value)} values)]"
    return value


def _unit(batch: str) -> str:
    return "class counts" if batch == "class_counts" else "rows"


def _format_row(row: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in row.items())


def _md(value: Any) -> str:
    """A value as markdown table cell text (pipes escaped so they do not split the cell)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).replace("|", "\\|").replace("\n", "\\n")
