"""A web worker loads what requests need before the first one, then freezes it out of the
garbage collector's reach (panel/core/warmup.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import gc, json, sys
import panel.wsgi
gc.collect()
print(json.dumps({
    "frozen": gc.get_freeze_count(),
    "tracked": len(gc.get_objects()),
    "views": "panel.api.views.services" in sys.modules and "panel.web.views" in sys.modules,
}))
"""


def test_loading_the_wsgi_app_loads_the_views_and_freezes_them():
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env={**os.environ},
                         capture_output=True, text=True, timeout=60, check=True).stdout
    probe = json.loads(out.strip().splitlines()[-1])
    assert probe["views"]
    # a full collection now scans only what was made after the freeze, not the panel's code
    assert probe["frozen"] > 50_000
    assert probe["tracked"] < probe["frozen"] / 10
