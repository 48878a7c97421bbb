"""Readying a web server process before its first request, and keeping the garbage collector
off what it loaded.

Django imports the URL configuration, the views, the serializers and the templates lazily, on
the first request that needs them, and they stay for the life of the process: ~130,000
objects in the collector's oldest generation once the panel has served a few requests. A
collection of that generation stops every thread of the worker for ~50-60 ms on these
machines; the collector starts one every few tens of seconds under load, which alone is
enough to spoil the API's p99. ``gc.freeze()`` moves everything alive at that point into a
permanent generation that collections never scan (what requests allocate afterwards is
collected as before), so they cost well under a millisecond.

Called once per process from ``panel.wsgi`` (gunicorn loads it in each worker, after the fork).
"""

from __future__ import annotations

import gc

from django.template.loader import get_template
from django.urls import get_resolver


def prepare_process() -> None:
    _ = get_resolver().reverse_dict  # walks every URLconf (importing its views): reverse tables
    get_template("base.html")  # the template engines and their loaders
    gc.collect()
    gc.freeze()
