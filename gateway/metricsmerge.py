"""Several processes' Prometheus expositions as one: what a single process would have said.

Worker processes each keep their own registry; a scrape (answered by any one of them) adds
their expositions up so counters, histograms and summable gauges read as one gateway's.
A few gauges are not sums: the age of the oldest undelivered statement is the largest one,
readiness and a target's being up the smallest (only when every worker says so), start
times the earliest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import Sample

__all__ = ["merge_expositions"]

_Combine = Callable[[float, float], float]

# Families whose samples are not added up (everything else is).
_LARGEST = frozenset({
    "lrs_gateway_forwarding_lag_seconds",
    "process_max_fds",
    "process_virtual_memory_max_bytes",
})
# Up only when every worker says so (each worker probes its own outbox's targets).
_SMALLEST = frozenset({"lrs_gateway_ready", "lrs_gateway_forwarding_target_up",
                       "process_start_time_seconds"})


def _combiner(family: Metric, sample_name: str) -> _Combine:
    if sample_name.endswith("_created") or family.name in _SMALLEST:
        return min
    # The text format has no info type: an info family arrives as a gauge named *_info.
    if (family.name in _LARGEST or family.type in ("info", "stateset")
            or family.name.endswith("_info")):
        return max
    return _add


def _add(a: float, b: float) -> float:
    return a + b


class _Merged(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def merge_expositions(expositions: Iterable[str]) -> bytes:
    """Add up Prometheus text expositions sample by sample (same name and labels).

    Families keep the order they first appear in; samples keep theirs within a family.
    """
    families: dict[str, Metric] = {}
    samples: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], Sample]] = {}
    for text in expositions:
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit)
                samples[family.name] = {}
            seen = samples[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                earlier = seen.get(key)
                if earlier is None:
                    seen[key] = sample
                else:
                    value = _combiner(family, sample.name)(earlier.value, sample.value)
                    seen[key] = earlier._replace(value=value)
    for name, family in families.items():
        family.samples = list(samples[name].values())
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(families.values()))
    return generate_latest(registry)
