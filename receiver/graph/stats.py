"""Per-edge statistics: counters, latency histograms, event-time series."""

from __future__ import annotations

from array import array
from bisect import bisect_left
from dataclasses import dataclass

# node kinds, strongest first: a name seen as a service.name is a service whatever else it is
NODE_KINDS = ("service", "database", "messaging", "user", "virtual")
KIND_RANK = {k: i for i, k in enumerate(NODE_KINDS)}

CT_NONE = ""
CT_MESSAGING = "messaging_system"
CT_DATABASE = "database"
CT_VIRTUAL = "virtual_node"


@dataclass(slots=True)
class Bucket:
    """One event-time bucket of an edge (all calls whose client span ended in [start_s, start_s+width))."""

    start_s: float
    calls: int = 0
    errors: int = 0
    client_latency_sum_s: float = 0.0
    server_latency_sum_s: float = 0.0
    paired_calls: int = 0  # calls where both a client and a server span were seen
    network_gap_sum_s: float = 0.0  # sum of (client latency - server latency) over paired calls


def quantile(q: float, counts: list[int], bounds: list[float], overflow_max: float) -> float | None:
    """The q-quantile of a histogram (`counts[i]` = observations in (bounds[i-1], bounds[i]], the
    last one the overflow bucket above the highest bound), linearly interpolated inside the bucket
    like Prometheus' `histogram_quantile`; inside the overflow bucket it interpolates up to the
    largest value observed there (`overflow_max`) instead of returning the highest bound."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    cum = 0
    for i, c in enumerate(counts):
        if c and cum + c >= rank:
            lo = bounds[i - 1] if i > 0 else 0.0
            hi = bounds[i] if i < len(bounds) else max(overflow_max, lo)
            return lo + (hi - lo) * ((rank - cum) / c)
        cum += c
    return None


_SLOT = 7
_EMPTY_SLOT = array("d", [-1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])


def _empty_slot(idx: int) -> array:
    return array("d", [float(idx), 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])


class EdgeStats:
    """Cumulative statistics of one (client, server, connection_type) edge."""

    __slots__ = (
        "client", "server", "connection_type", "calls", "errors",
        "client_counts", "server_counts", "client_sum", "server_sum", "client_max", "server_max",
        "paired", "gap_sum", "first_ns", "last_ns", "updated", "series", "late_events", "_cfg",
    )

    def __init__(self, client: str, server: str, connection_type: str,
                 cfg: tuple[list[float], int, int]) -> None:
        """`cfg` = (latency bucket bounds in seconds, event-time bucket width in ns, max buckets)."""
        self.client = client
        self.server = server
        self.connection_type = connection_type
        self._cfg = cfg
        n = len(cfg[0]) + 1
        self.calls = 0
        self.errors = 0
        self.client_counts = [0] * n  # last slot: above the highest bound (+Inf)
        self.server_counts = [0] * n
        self.client_sum = 0.0
        self.server_sum = 0.0
        self.client_max = 0.0  # largest latency above the highest bound (caps the +Inf bucket)
        self.server_max = 0.0
        self.paired = 0
        self.gap_sum = 0.0
        self.first_ns = 0  # event time (unix ns) of the earliest call
        self.last_ns = 0  # event time of the latest call
        self.updated = 0.0  # wall clock of the last call recorded (staleness)
        # Event-time series: a ring of max_buckets slots of _SLOT doubles each, allocated on the
        # first call: [bucket index, calls, errors, client_sum, server_sum, paired, gap_sum]; bucket
        # i lives in slot i % max_buckets (56 bytes a slot, so 20 KB an edge for 360 buckets).
        self.series: array | None = None
        self.late_events = 0  # events older than the slot's current bucket (not in the series)

    @property
    def first_seen(self) -> float:
        return self.first_ns / 1e9

    @property
    def last_seen(self) -> float:
        return self.last_ns / 1e9

    def add(self, client_lat: float, server_lat: float, failed: bool, paired: bool, event_ns: int,
            now: float) -> None:
        """Record one call: latencies in seconds, event time = end of the client span (unix ns)."""
        self.add_many([(client_lat, server_lat, failed, paired, event_ns)], now)

    def add_many(self, calls: list[tuple[float, float, bool, bool, int]], now: float) -> None:
        """Record calls given as (client latency s, server latency s, failed, paired, event ns)
        tuples: one loop over locals, aggregating per event-time bucket first (a batch rarely spans
        more than one or two buckets), then the totals and the ring from those aggregates."""
        if not calls:
            return
        bounds, bucket_ns, nb = self._cfg
        top = len(bounds)
        cc, sc = self.client_counts, self.server_counts
        cmax, smax = self.client_max, self.server_max
        first, last = self.first_ns, self.last_ns
        if self.calls == 0:
            first = last = calls[0][4]
        agg: dict[int, list] = {}
        lo = hi = 0
        b = None
        for cl, sl, failed, is_paired, end in calls:
            i = bisect_left(bounds, cl)
            cc[i] += 1
            if i == top and cl > cmax:
                cmax = cl
            i = bisect_left(bounds, sl)
            sc[i] += 1
            if i == top and sl > smax:
                smax = sl
            if end > last:
                last = end
            elif end < first:
                first = end
            if not lo <= end < hi:  # calls of one batch mostly share their event-time bucket
                idx = end // bucket_ns
                lo = idx * bucket_ns
                hi = lo + bucket_ns
                b = agg.get(idx)
                if b is None:
                    b = agg[idx] = [0, 0, 0.0, 0.0, 0, 0.0]
            b[0] += 1
            b[2] += cl
            b[3] += sl
            if failed:
                b[1] += 1
            if is_paired:
                b[4] += 1
                b[5] += cl - sl
        self.client_max, self.server_max = cmax, smax
        self.first_ns, self.last_ns = first, last
        self.calls += len(calls)
        self.updated = now
        ring = self.series
        if ring is None:
            ring = self.series = array("d", _EMPTY_SLOT) * nb
        for idx, b in agg.items():
            self.errors += b[1]
            self.client_sum += b[2]
            self.server_sum += b[3]
            self.paired += b[4]
            self.gap_sum += b[5]
            j = (idx % nb) * _SLOT
            cur = ring[j]
            if cur != idx:
                if idx < cur:  # older than the series reaches back: in the totals only
                    self.late_events += b[0]
                    continue
                ring[j:j + _SLOT] = _empty_slot(idx)
            ring[j + 1] += b[0]
            ring[j + 2] += b[1]
            ring[j + 3] += b[2]
            ring[j + 4] += b[3]
            ring[j + 5] += b[4]
            ring[j + 6] += b[5]

    def merge_into(self, other: EdgeStats) -> None:
        """Add this edge's counters into `other` (used to fold connection types for the DiGraph)."""
        other.calls += self.calls
        other.errors += self.errors
        other.client_counts = [a + b for a, b in zip(other.client_counts, self.client_counts, strict=True)]
        other.server_counts = [a + b for a, b in zip(other.server_counts, self.server_counts, strict=True)]
        other.client_sum += self.client_sum
        other.server_sum += self.server_sum
        other.client_max = max(other.client_max, self.client_max)
        other.server_max = max(other.server_max, self.server_max)
        other.paired += self.paired
        other.gap_sum += self.gap_sum
        if other.calls == self.calls:  # other was empty
            other.first_ns, other.last_ns = self.first_ns, self.last_ns
        else:
            other.first_ns = min(other.first_ns, self.first_ns)
            other.last_ns = max(other.last_ns, self.last_ns)
        other.updated = max(other.updated, self.updated)
        other.late_events += self.late_events

    def to_dict(self, bounds: list[float]) -> dict:
        def ms(q: float, counts: list[int], mx: float) -> float | None:
            v = quantile(q, counts, bounds, mx)
            return None if v is None else round(v * 1000.0, 3)

        cc, sc = self.client_counts, self.server_counts
        return {
            "source": self.client,
            "target": self.server,
            "calls": self.calls,
            "errors": self.errors,
            "error_rate": round(self.errors / self.calls, 6) if self.calls else 0.0,
            "connection_type": self.connection_type,
            # the caller's view (client span duration; for `user` edges the server span's)
            "p50_ms": ms(0.5, cc, self.client_max),
            "p95_ms": ms(0.95, cc, self.client_max),
            "p99_ms": ms(0.99, cc, self.client_max),
            "server_p50_ms": ms(0.5, sc, self.server_max),
            "server_p95_ms": ms(0.95, sc, self.server_max),
            "server_p99_ms": ms(0.99, sc, self.server_max),
            "client_latency_sum_s": self.client_sum,
            "server_latency_sum_s": self.server_sum,
            "paired_calls": self.paired,
            # mean of (client - server) duration over calls with both spans: network + queueing
            "network_gap_avg_ms": round(self.gap_sum / self.paired * 1000.0, 3) if self.paired else None,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "updated": self.updated,
        }

    def buckets(self, bucket_ns: int) -> list[Bucket]:
        """The retained event-time buckets, oldest first: the last max_buckets bucket indexes up to
        the newest one seen (a slot still holding an older bucket is left out)."""
        ring = self.series
        if ring is None:
            return []
        n = len(ring) // _SLOT
        slots = [ring[j:j + _SLOT] for j in range(0, len(ring), _SLOT) if ring[j] >= 0]
        if not slots:
            return []
        newest = max(sl[0] for sl in slots)
        out = [
            Bucket(start_s=int(sl[0]) * bucket_ns / 1e9, calls=int(sl[1]), errors=int(sl[2]),
                   client_latency_sum_s=sl[3], server_latency_sum_s=sl[4], paired_calls=int(sl[5]),
                   network_gap_sum_s=sl[6])
            for sl in slots if sl[0] > newest - n
        ]
        out.sort(key=lambda b: b.start_s)
        return out
