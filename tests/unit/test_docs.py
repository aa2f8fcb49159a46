"""The README says what the code does: every metric family it exports, every row of the close table."""

from __future__ import annotations

from pathlib import Path

from gateway.core.closerules import CLOSE_RULES, From

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
GOLDEN = ROOT / "tests" / "golden" / "metrics.txt"


def test_readme_and_metrics_doc_name_every_metric_family() -> None:
    """Each family of the golden exposition is in the README's metrics table and in docs/metrics.md."""
    families = [line.split()[2] for line in GOLDEN.read_text(encoding="utf-8").splitlines()
                if line.startswith("# TYPE ")]
    metrics_doc = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    for family in families:
        short = family.removeprefix("ws_gateway_")
        assert short.removesuffix("_total") in README, f"README.md's metrics table lacks {short}"
        assert family.removesuffix("_total") in metrics_doc, f"docs/metrics.md lacks {family}"


def table_rows(text: str, header: str) -> list[str]:
    """The rows of the markdown table whose header line starts with ``header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


def test_readme_close_table_has_a_row_for_every_close_rule() -> None:
    """For each rule that sends the client a fixed code, some row of "What a client sees" gives that code
    with the start of the rule's reason in the client column (the rows with the peer's code are the
    first two; the rows for codes taken from the event name them too)."""
    rows = table_rows(README, "| what happened | client leg |")
    client_columns = [row.split("|")[2] for row in rows]
    for rule in CLOSE_RULES:
        send = rule.client
        if isinstance(send.code, From):
            continue
        head = send.reason.split("{")[0].split(":")[0].strip()
        assert any(str(int(send.code)) in column and head in column for column in client_columns), (
            f"no README close-table row says the client gets {int(send.code)} {head!r} ({rule.event.value}, "
            f"{rule.leg.value} leg)")
