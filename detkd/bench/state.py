"""The resumable state of a benchmark protocol: one JSON file of finished runs and measurements, re-read before every
write, since another process of the same protocol may have recorded rows meanwhile."""

from __future__ import annotations

import json
from pathlib import Path


def load_state(path: Path, sections: tuple[str, ...]) -> dict:
    """The state in ``path`` (empty if absent), with each of ``sections`` present as a dict."""
    state = json.loads(path.read_text()) if path.exists() else {}
    for key in sections:
        state.setdefault(key, {})
    return state


def save_state(path: Path, update, sections: tuple[str, ...]) -> dict:
    """Re-read, apply ``update(state)``, write; returns the state written."""
    state = load_state(path, sections)
    update(state)
    path.write_text(json.dumps(state, indent=1, default=str))
    return state
