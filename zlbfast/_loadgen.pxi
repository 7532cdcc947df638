# Load generator, test backends and latency histograms (csrc/loadgen.h,
# csrc/testbackend.h, csrc/histogram.h). Included by _native.pyx, whose
# `_b` (checked str -> bytes) and NativeError it uses.
#
# Boundary rules: the C side owns every thread and socket; the calls that
# block (a load run, stopping a backend) release the GIL, everything else is
# a counter read or a struct fill.

from libc.stdint cimport int64_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

cdef extern from "histogram.h":
    enum:
        ZLB_HIST_BUCKETS
    ctypedef struct zlb_hist:
        uint64_t count
        uint64_t min_ns
        uint64_t max_ns
        uint64_t sum_ns
        uint64_t buckets[ZLB_HIST_BUCKETS]
    void zlb_hist_init(zlb_hist *h) nogil
    void zlb_hist_record(zlb_hist *h, uint64_t ns) nogil
    void zlb_hist_merge(zlb_hist *dst, const zlb_hist *src) nogil
    uint64_t zlb_hist_percentile(const zlb_hist *h, double q) nogil
    uint32_t zlb_hist_bucket_of(uint64_t ns) nogil
    void zlb_hist_bucket_bounds(uint32_t idx, uint64_t *lo, uint64_t *hi) nogil

cdef extern from "loadgen.h":
    enum:
        ZLB_LG_HTTP
        ZLB_LG_TCP
        ZLB_LG_ERR_CONNECT
        ZLB_LG_ERR_RESET
        ZLB_LG_ERR_TIMEOUT
        ZLB_LG_ERR_BAD_STATUS
        ZLB_LG_ERR_PROTOCOL
        ZLB_LG_ERR_COUNT
        ZLB_LG_LABELS
    ctypedef struct zlb_lg_config:
        char host[64]
        uint16_t port
        int mode
        int threads
        int connections
        double rate
        int64_t duration_ns
        uint64_t max_requests
        int64_t timeout_ns
        char path[512]
        char host_header[128]
        char label_header[64]
        uint32_t tcp_size
    ctypedef struct zlb_lg_label:
        char value[48]
        uint64_t count
    ctypedef struct zlb_lg_result:
        uint64_t requests
        uint64_t errors[ZLB_LG_ERR_COUNT]
        uint64_t bytes_read
        uint64_t connects
        int64_t duration_ns
        zlb_hist latency
        uint32_t nlabels
        uint64_t labels_other
        uint64_t labels_missing
        zlb_lg_label labels[ZLB_LG_LABELS]
    void zlb_lg_config_defaults(zlb_lg_config *cfg)
    int zlb_lg_run(const zlb_lg_config *cfg, zlb_lg_result *out, char *err, size_t errlen) nogil

cdef extern from "testbackend.h":
    enum:
        ZLB_TB_HTTP
        ZLB_TB_ECHO
        ZLB_TB_SINK
    ctypedef struct zlb_tb_config:
        int kind
        char host[64]
        uint16_t port
        int threads
        int status
        uint32_t body_size
        int64_t delay_ns
        char label[64]
    ctypedef struct zlb_tb:
        pass
    void zlb_tb_config_defaults(zlb_tb_config *cfg)
    zlb_tb *zlb_tb_start(const zlb_tb_config *cfg, char *err, size_t errlen) nogil
    uint16_t zlb_tb_port(const zlb_tb *tb)
    void zlb_tb_stall(zlb_tb *tb, int64_t duration_ns)
    uint64_t zlb_tb_requests(const zlb_tb *tb)
    uint64_t zlb_tb_bytes(const zlb_tb *tb)
    uint64_t zlb_tb_connections(const zlb_tb *tb)
    void zlb_tb_stop(zlb_tb *tb) nogil

# Order of zlb_lg_error; the names are the keys of LoadResult.errors.
LOAD_ERROR_KINDS = ("connect", "reset", "timeout", "bad_status", "protocol")
_BACKEND_KINDS = {"http": ZLB_TB_HTTP, "echo": ZLB_TB_ECHO, "sink": ZLB_TB_SINK}
_LOAD_MODES = {"http": ZLB_LG_HTTP, "tcp": ZLB_LG_TCP}


cdef void _set_str(char *dst, size_t cap, str value) except *:
    """Copies value NUL-terminated into a fixed C field (raises if too long)."""
    cdef bytes b = _b(value, <int>cap)
    memcpy(dst, <const char *>b, len(b) + 1)


cdef class Histogram:
    """Latency histogram in ns: log-linear, relative error < 1/64 (histogram.h).

    Percentiles report the highest value of the bucket holding the sample,
    clamped to the recorded min/max.
    """
    cdef zlb_hist *h

    def __cinit__(self):
        self.h = <zlb_hist *>malloc(sizeof(zlb_hist))
        if self.h == NULL:
            raise MemoryError()
        zlb_hist_init(self.h)

    def __dealloc__(self):
        free(self.h)

    def record(self, uint64_t ns):
        zlb_hist_record(self.h, ns)

    def record_many(self, values):
        cdef uint64_t v
        for v in values:
            zlb_hist_record(self.h, v)

    def merge(self, Histogram other not None):
        zlb_hist_merge(self.h, other.h)

    def percentile(self, double q):
        """Value (ns) at quantile q in [0, 1]; 0 when empty."""
        return zlb_hist_percentile(self.h, q)

    @property
    def count(self):
        return self.h.count

    @property
    def min(self):
        return self.h.min_ns if self.h.count else 0

    @property
    def max(self):
        return self.h.max_ns

    @property
    def mean(self):
        return self.h.sum_ns / self.h.count if self.h.count else 0.0

    @staticmethod
    def bucket_bounds(uint64_t ns):
        """(lo, hi) inclusive bounds of the bucket that counts ns."""
        cdef uint64_t lo, hi
        zlb_hist_bucket_bounds(zlb_hist_bucket_of(ns), &lo, &hi)
        return lo, hi

    def buckets(self):
        """Non-empty buckets as (lo_ns, hi_ns, count), in increasing order."""
        cdef uint64_t lo, hi
        cdef uint32_t i, n = ZLB_HIST_BUCKETS
        out = []
        for i in range(n):
            if self.h.buckets[i]:
                zlb_hist_bucket_bounds(i, &lo, &hi)
                out.append((lo, hi, self.h.buckets[i]))
        return out


cdef class LoadResult:
    """What one run_load() measured. errors: counts by LOAD_ERROR_KINDS
    (bad_status counts responses that are also in requests); labels: count of
    responses per value of the label header."""
    cdef readonly uint64_t requests
    cdef readonly double duration_s
    cdef readonly dict errors
    cdef readonly uint64_t bytes_read
    cdef readonly uint64_t connects
    cdef readonly Histogram latency
    cdef readonly dict labels
    cdef readonly uint64_t labels_other
    cdef readonly uint64_t labels_missing

    @property
    def rps(self):
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    def summary(self):
        """JSON-ready dict: counts, req/s and latency percentiles in ms."""
        h = self.latency
        return {
            "requests": self.requests,
            "duration_s": self.duration_s,
            "rps": self.rps,
            "errors": dict(self.errors),
            "latency_ms": {
                "p50": h.percentile(0.50) / 1e6,
                "p90": h.percentile(0.90) / 1e6,
                "p99": h.percentile(0.99) / 1e6,
                "p99_9": h.percentile(0.999) / 1e6,
                "max": h.max / 1e6,
                "mean": h.mean / 1e6,
            },
            "labels": dict(self.labels),
        }


def run_load(str host, int port, *, str mode="http", int threads=1, int connections=64,
             double rate=0.0, double duration=10.0, unsigned long long max_requests=0,
             double timeout=5.0, str path="/", str host_header="", str label_header="",
             unsigned int tcp_size=64):
    """Runs one load test (blocking, GIL released) and returns a LoadResult.

    rate > 0 is an open loop at that many requests/s in total, with latency
    measured from each request's intended send time; rate == 0 is a closed
    loop. Stops after `duration` seconds (0 = no limit) or `max_requests`.
    """
    cdef zlb_lg_config cfg
    cdef zlb_lg_result *res
    cdef char err[512]
    cdef int rc
    if mode not in _LOAD_MODES:
        raise NativeError(f"unknown load mode {mode!r} (http, tcp)")
    zlb_lg_config_defaults(&cfg)
    _set_str(cfg.host, sizeof(cfg.host), host)
    _set_str(cfg.path, sizeof(cfg.path), path)
    _set_str(cfg.host_header, sizeof(cfg.host_header), host_header)
    _set_str(cfg.label_header, sizeof(cfg.label_header), label_header)
    cfg.port = port
    cfg.mode = _LOAD_MODES[mode]
    cfg.threads = threads
    cfg.connections = connections
    cfg.rate = rate
    cfg.duration_ns = <int64_t>(duration * 1e9)
    cfg.max_requests = max_requests
    cfg.timeout_ns = <int64_t>(timeout * 1e9)
    cfg.tcp_size = tcp_size
    res = <zlb_lg_result *>malloc(sizeof(zlb_lg_result))
    if res == NULL:
        raise MemoryError()
    try:
        with nogil:
            rc = zlb_lg_run(&cfg, res, err, sizeof(err))
        if rc != 0:
            raise NativeError(err.decode(errors="replace"))
        out = LoadResult()
        out.requests = res.requests
        out.duration_s = res.duration_ns / 1e9
        out.errors = {LOAD_ERROR_KINDS[k]: res.errors[k] for k in range(ZLB_LG_ERR_COUNT)}
        out.bytes_read = res.bytes_read
        out.connects = res.connects
        out.latency = Histogram()
        memcpy(out.latency.h, &res.latency, sizeof(zlb_hist))
        out.labels = {res.labels[i].value.decode(errors="replace"): res.labels[i].count
                      for i in range(res.nlabels)}
        out.labels_other = res.labels_other
        out.labels_missing = res.labels_missing
        return out
    finally:
        free(res)


cdef class BuiltinBackend:
    """A backend served by C threads in this process (csrc/testbackend.h).

    kind: "http" (keep-alive responder), "echo" or "sink". Use as a context
    manager or call stop(); the port is bound when the constructor returns.
    """
    cdef zlb_tb *tb
    cdef readonly str kind
    cdef readonly str host
    cdef readonly int port
    cdef readonly str label

    def __cinit__(self, str kind="http", str host="127.0.0.1", int port=0, *, int threads=1,
                  int status=200, unsigned int body_size=64, double delay=0.0, str label=""):
        cdef zlb_tb_config cfg
        cdef char err[512]
        if kind not in _BACKEND_KINDS:
            raise NativeError(f"unknown backend kind {kind!r} (http, echo, sink)")
        zlb_tb_config_defaults(&cfg)
        cfg.kind = _BACKEND_KINDS[kind]
        _set_str(cfg.host, sizeof(cfg.host), host)
        _set_str(cfg.label, sizeof(cfg.label), label)
        cfg.port = port
        cfg.threads = threads
        cfg.status = status
        cfg.body_size = body_size
        cfg.delay_ns = <int64_t>(delay * 1e9)
        with nogil:
            self.tb = zlb_tb_start(&cfg, err, sizeof(err))
        if self.tb == NULL:
            raise NativeError(err.decode(errors="replace"))
        self.kind = kind
        self.host = host
        self.port = zlb_tb_port(self.tb)
        self.label = label

    def __dealloc__(self):
        if self.tb != NULL:
            with nogil:
                zlb_tb_stop(self.tb)

    cdef zlb_tb *_live(self) except NULL:
        if self.tb == NULL:
            raise NativeError("backend is stopped")
        return self.tb

    def stop(self):
        """Stops serving and closes every socket; idempotent."""
        cdef zlb_tb *tb = self.tb
        self.tb = NULL
        if tb != NULL:
            with nogil:
                zlb_tb_stop(tb)

    def stall(self, double seconds):
        """HTTP: hold every response until `seconds` from now."""
        zlb_tb_stall(self._live(), <int64_t>(seconds * 1e9))

    @property
    def requests(self):
        """HTTP responses sent (counted before they are written)."""
        return zlb_tb_requests(self._live())

    @property
    def bytes_received(self):
        return zlb_tb_bytes(self._live())

    @property
    def connections(self):
        return zlb_tb_connections(self._live())

    @property
    def address(self):
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
