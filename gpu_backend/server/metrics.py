"""Prometheus metrics of one service: requests, tokens, latency histograms, and engine load read at scrape time.

Every series is labelled with a model this service serves, or ``other`` (no model, or a name it
does not serve): a client can send any name, and each distinct label value would be a series
kept for the life of the process.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .admission import Admission
from .client import EngineClient

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_TTFT_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
disable_created_metrics()  # the *_created series double every counter's lines and nothing here reads them
_ITL_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)
OTHER_MODEL = "other"


class Metrics:
    def __init__(self, client: EngineClient, admission: Admission) -> None:
        self.registry = CollectorRegistry()
        self._labels = {name: label_value(name) for name in client.model_names()}
        self.requests = Counter("edgewise_requests", "Requests answered, by route, model and HTTP status",
                                ["route", "model", "status"], registry=self.registry)
        self.prompt_tokens = Counter("edgewise_prompt_tokens", "Prompt tokens processed", ["model"],
                                     registry=self.registry)
        self.generation_tokens = Counter("edgewise_generation_tokens", "Tokens generated", ["model"],
                                         registry=self.registry)
        self.aborted = Counter("edgewise_requests_aborted", "Generations aborted because the client went away",
                               ["model"], registry=self.registry)
        self.rejected = Counter("edgewise_requests_rejected", "Requests refused with 429 (queue full)", ["model"],
                                registry=self.registry)
        self.ttft = Histogram("edgewise_time_to_first_token_seconds", "Arrival to first generated token",
                              ["model"], buckets=_TTFT_BUCKETS_S, registry=self.registry)
        self.itl = Histogram("edgewise_inter_token_latency_seconds", "Time between generated tokens", ["model"],
                             buckets=_ITL_BUCKETS_S, registry=self.registry)
        self.registry.register(_EngineLoad(client, admission))

    def model_label(self, model: str | None) -> str:
        """The ``model`` label for a request naming ``model``: the name if this service serves it, else ``other``."""
        return self._labels.get(model or "", OTHER_MODEL)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def label_value(text: str) -> str:
    """``text`` with control, format and surrogate characters spelled as escapes (NUL as ``\\u0000``): prometheus_client
    escapes only backslash, quote and newline, and writes the rest as they are (a NUL byte, or an
    unencodable lone surrogate that would fail every scrape)."""
    return "".join(f"\\u{ord(char):04x}" if unicodedata.category(char).startswith("C") else char for char in text)


class _EngineLoad(Collector):
    """Gauges read from the engines at scrape time, so they are never stale."""

    def __init__(self, client: EngineClient, admission: Admission) -> None:
        self._client = client
        self._admission = admission

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        families = {
            "num_running": GaugeMetricFamily("edgewise_requests_running", "Sequences in the running batch",
                                             labels=["model"]),
            "num_waiting": GaugeMetricFamily("edgewise_requests_waiting", "Sequences waiting in the engine",
                                             labels=["model"]),
            "kv_blocks_used": GaugeMetricFamily("edgewise_kv_blocks_used", "KV-cache blocks in use",
                                                labels=["model"]),
            "kv_blocks_free": GaugeMetricFamily("edgewise_kv_blocks_free", "KV-cache blocks free", labels=["model"]),
        }
        preemptions = CounterMetricFamily("edgewise_preemptions", "Sequences preempted for KV blocks and recomputed",
                                          labels=["model"])
        queue = GaugeMetricFamily("edgewise_queue_depth", "Requests admitted beyond what the engine runs at once",
                                  labels=["model"])
        for model, stats in self._client.stats().items():
            for key, family in families.items():
                family.add_metric([label_value(model)], stats[key])
            preemptions.add_metric([label_value(model)], stats["num_preemptions"])
            queue.add_metric([label_value(model)], self._admission.queued(model))
        events = CounterMetricFamily("edgewise_instance_events", "Failure events of sharded instances: instance_lost, "
                                     "instance_restarted, request_lost, request_recomputed, transfer_failed", labels=["model", "event"])
        for model, counts in self._client.events().items():
            for event, count in sorted(counts.items()):
                events.add_metric([label_value(model), event], count)
        yield from families.values()
        yield preemptions
        yield queue
        yield events
