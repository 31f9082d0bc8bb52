"""The Llama Guard 3 hazard taxonomy (MLCommons AI Safety, S1..S14)."""

from __future__ import annotations

HAZARDS: dict[str, str] = {
    "S1": "Violent Crimes",
    "S2": "Non-Violent Crimes",
    "S3": "Sex-Related Crimes",
    "S4": "Child Sexual Exploitation",
    "S5": "Defamation",
    "S6": "Specialized Advice",
    "S7": "Privacy",
    "S8": "Intellectual Property",
    "S9": "Indiscriminate Weapons",
    "S10": "Hate",
    "S11": "Suicide & Self-Harm",
    "S12": "Sexual Content",
    "S13": "Elections",
    "S14": "Code Interpreter Abuse",
}


def hazard_name(code: str) -> str:
    """The hazard's name, or a marker for a code outside the taxonomy."""
    return HAZARDS.get(code, "Unknown category")
