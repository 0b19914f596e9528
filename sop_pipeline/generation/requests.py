"""Is this a request for an SOP? Checked before anything is stored or sent to the provider.

People type `/sop hi` or paste a weather question into the wrong channel; a model call would
cost money and produce a nonsense "SOP". A small word list is enough: real requests name an
SOP or procedure, or an operation (cleaning, calibration, dispensing...) on something.
"""

from __future__ import annotations

import re

EXAMPLE_REQUEST = "/sop Write an SOP for cleaning of the tablet compression machine"

_SOP_WORDS = re.compile(
    r"\b(sops?|procedures?|standard operating|work instructions?|protocols?|"
    r"instructions? for|steps? (?:for|to)|how to|process for|checklists?|guidelines? for)\b",
    re.IGNORECASE,
)

# Stems of the operations and objects quality teams write SOPs about.
_DOMAIN_STEMS = (
    "clean", "sanitiz", "sanitis", "disinfect", "steriliz", "sterilis", "decontaminat", "wash",
    "calibrat", "maint", "service", "servicing", "inspect", "operat", "handl", "storage", "stor",
    "receiv", "dispens", "weigh", "sampl", "test", "analys", "analyz", "assay", "label",
    "packag", "pack", "ship", "transport", "dispos", "waste", "spill", "gown", "hygien",
    "pest", "monitor", "environment", "temperatur", "humidity", "water", "qualif", "validat",
    "verif", "audit", "training", "train", "deviation", "capa", "complaint", "recall",
    "change control", "document", "record", "batch", "release", "approv", "review",
    "supplier", "vendor", "equipment", "machine", "instrument", "balance", "autoclave",
    "hplc", "reactor", "tank", "line clearance", "clearance", "area", "room", "warehouse",
    "material", "raw material", "product", "tablet", "capsule", "granulat", "coating",
    "compress", "blend", "mix", "fill", "seal", "allergen", "haccp", "food", "kitchen",
    "lab", "laborator", "safety", "lockout", "tagout", "ppe", "emergency", "fire", "first aid",
    "incident", "investigat", "quarantin", "reject", "rework", "destruct", "archiv",
    "backup", "access", "password", "log", "change", "setup", "set up", "start-up", "startup",
    "shutdown", "shut down", "install", "repair", "replac", "prepar", "preparation",
    "reconcil", "inventory", "stock", "retention", "stability", "micro", "media", "culture",
    "swab", "rinse", "filter", "purif", "compressor", "boiler", "hvac", "utility", "utilities",
    "pump", "valve", "conveyor", "forklift", "vehicle", "glass", "metal detect", "x-ray",
)
_WEAK_STEMS = frozenset({
    "test", "log", "change", "access", "review", "record", "document", "area", "room",
    "product", "material", "pack", "stor", "train", "mix", "fill", "seal", "lab", "micro",
    "media", "culture", "filter", "stock", "fire", "glass", "reject", "operat", "service",
})
_DOMAIN_RE = re.compile(r"\b(" + "|".join(re.escape(s) for s in _DOMAIN_STEMS) + r")", re.I)

_SMALL_TALK = re.compile(
    r"^\s*(hi|hello|hey|yo|hiya|howdy|thanks?|thank you|ty|ok(ay)?|cool|good (morning|"
    r"afternoon|evening)|bye|help|test(ing)?|ping|\?+|lol)\b[\s!.?]*$"
    r"|\b(weather|joke|poem|song|lyrics|recipe for (a )?cocktail|who are you|what are you|"
    r"how are you|what time is it|what's up|whats up|stock price|football|horoscope)\b",
    re.IGNORECASE,
)


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
# Bidirectional controls (U+202A-202E, U+2066-2069, marks) and zero-width characters: a
# right-to-left override makes a request read differently from what it says, so it is never
# stored or echoed (the Slack layer removes the same set from everything it posts).
_INVISIBLE = re.compile("[\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c"
                        "\u200b-\u200d\u2060-\u2064\ufeff\u180e]")


def normalize_request(text: str) -> str:
    """Trim, drop control characters (terminal escapes, NUL: PostgreSQL refuses to store it),
    bidirectional and zero-width characters, drop a leading '/sop' someone typed twice, and
    collapse runs of blank space."""
    text = _INVISIBLE.sub("", text or "")
    text = _CONTROL.sub(" ", text).strip()
    text = re.sub(r"^/sop\b", "", text, flags=re.IGNORECASE).strip()
    return re.sub(r"[ \t]+", " ", text)


def looks_like_sop_request(text: str) -> bool:
    """True when the text asks for a procedure: it names an SOP/procedure, or an operation or
    object from the plant and is not small talk."""
    if not re.search(r"[A-Za-z]{2,}", text):
        return False
    if _SOP_WORDS.search(text):
        return True
    if _SMALL_TALK.search(text):
        return False
    hits = {m.group(1).lower() for m in _DOMAIN_RE.finditer(text)}
    if hits - _WEAK_STEMS:
        return True
    # Generic words ("test", "log", "review") only count in a request of a few words.
    return bool(hits) and len(re.findall(r"[A-Za-z]+", text)) >= 3
