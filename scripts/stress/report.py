"""The harness's results as a terminal table, and as the figures section of the Reliability
page (between its `<!-- stress:begin` and `<!-- stress:end -->` lines)."""

from __future__ import annotations

from typing import Any

PAGE_BEGIN = "<!-- stress:begin"
PAGE_END = "<!-- stress:end -->"
HEADER = ["scenario", "engine", "figure", "measured", "target", "result"]


def _result(row: dict[str, Any], notes: list[str]) -> str:
    if row["status"] == "SKIP":
        return str(row["note"] or "SKIP")
    if row["note"]:
        notes.append(row["note"])
        return f"{row['status']} [{len(notes)}]"
    return str(row["status"])


def table(rows: list[dict[str, Any]]) -> str:
    """The table of figures; notes (a shortened run...) as numbered lines below it."""
    notes: list[str] = []
    cells = [
        [r["scenario"], r["engine"], r["figure"], r["shown"], r["target"], _result(r, notes)]
        for r in rows
    ]
    widths = [max(len(str(c)) for c in column) for column in zip(HEADER, *cells, strict=True)]
    lines = [HEADER, ["-" * w for w in widths], *cells]
    text = "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )
    return text + "".join(f"\n[{n}] {note}" for n, note in enumerate(notes, 1))


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(document: dict[str, Any]) -> str:
    """The figures section of the Reliability page, from a run's JSON document."""
    machine, versions = document["machine"], document["versions"]
    rows = [row for scenario in document["scenarios"] for row in scenario["rows"]]
    judged = [row for row in rows if row["status"] in ("PASS", "MISS")]
    missed = [row for row in judged if row["status"] == "MISS"]
    source = document.get("source") or {}
    commit = ""
    if source.get("commit"):
        changes = " with local changes" if source.get("changes") else ""
        commit = f" on commit `{source['commit'][:10]}`{changes}"
    lines = [
        f"Run of {document['started']}{commit} ({document['profile']} profile, seed "
        f"{document['seed']}), {document['seconds'] / 60:.0f} minutes on "
        f"{machine['cpu_usable'] or machine['cpu_count']} CPUs ({machine['platform']}, "
        f"{machine['python']}, {machine['filesystem'] or 'unknown'} file system). Versions: "
        + ", ".join(f"{name} {version}" for name, version in versions.items() if version)
        + ".",
        "",
        f"**{len(judged) - len(missed)} of {len(judged)} figures at target.**"
        + (
            " Missed: "
            + "; ".join(f"{r['scenario']} / {r['engine']} / {r['figure']}" for r in missed)
            + "."
            if missed
            else ""
        ),
    ]
    for scenario in document["scenarios"]:
        notes: list[str] = []
        lines += [
            "",
            f"### {scenario['name']} ({scenario['seconds'] / 60:.1f} min)",
            "",
            "| engine | figure | measured | target | result |",
            "|---|---|---|---|---|",
        ]
        for row in scenario["rows"]:
            result = _result(row, notes)
            if row["status"] in ("PASS", "MISS"):
                result = f"**{result}**" if row["status"] == "MISS" else result
            lines.append(
                "| "
                + " | ".join(
                    _cell(c)
                    for c in (row["engine"], row["figure"], row["shown"], row["target"], result)
                )
                + " |"
            )
        if notes:
            lines.append("")
            lines += [f"[{n}] {_cell(note)}  " for n, note in enumerate(notes, 1)]
    return "\n".join(lines) + "\n"


def write_page(path: str, document: dict[str, Any]) -> None:
    """Replace the part of the page between its markers with the figures of `document`."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    start = text.index(PAGE_BEGIN)
    end = text.index(PAGE_END, start)
    head = text[: text.index("\n", start) + 1]  # the begin marker's line stays as written
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(head + "\n" + markdown(document) + "\n" + text[end:])
