"""Results files made of ``## ...`` sections that different benchmark runs (CPU, GPU) fill independently."""

from __future__ import annotations

from pathlib import Path


def write_sections(path: Path, title: str, sections: list[str]) -> None:
    """Write ``## ...`` sections into ``path`` under ``# title``, replacing same-titled ones, keeping the others."""
    kept: dict[str, str] = {}
    if path.exists():
        for chunk in path.read_text().split("\n## ")[1:]:
            kept["## " + chunk.splitlines()[0]] = "## " + chunk.rstrip() + "\n"
    for section in sections:
        kept[section.splitlines()[0]] = section.rstrip() + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# {title}\n\n" + "\n".join(kept.values()))
