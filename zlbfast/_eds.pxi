# EDS updates decoded in C (csrc/eds.h) into compact endpoint tables. Included by _native.pyx.
#
# A ClusterLoadAssignment of 10,000 endpoints used to become 10,000 model.Endpoint objects, each checked by
# zlbfast.config and then handed to the snapshot builder one attribute at a time: most of the time it took to
# apply. Here the serialized message goes to C once (GIL released), comes back as one EndpointTable, and the
# table goes to the snapshot builder as one array (SnapshotBuilder.add_endpoints). Endpoint objects are made only
# when someone iterates the table (admin dumps, tests).

import collections.abc
import socket as _socket

from libc.stdint cimport uint8_t, uint16_t, uint32_t
from libc.stdlib cimport free
from libc.string cimport memcmp


cdef object _endpoint_class = None


cdef object _model_endpoint():
    # Imported on first use: zlbfast.model is plain Python and must stay importable without this module.
    global _endpoint_class
    if _endpoint_class is None:
        from zlbfast.model import Endpoint
        _endpoint_class = Endpoint
    return _endpoint_class


cdef class EndpointTable:
    """An immutable sequence of zlbfast.model.Endpoint, stored as compact specs.

    Only EdsDecoder.decode makes one, and only from endpoints that pass the model's endpoint rules as they are
    (zlbfast.config._plain_endpoint, with the decoder's limits) and that are unique by (address, port), so
    zlbfast.config.validate does not check them one by one again. Compares equal to any sequence of the same
    Endpoints, a tuple included."""
    cdef zlb_ep_spec *eps
    cdef uint32_t n
    cdef readonly tuple zones  # zone names; specs refer to them by index

    def __cinit__(self):
        self.eps = NULL
        self.n = 0
        self.zones = ()

    def __dealloc__(self):
        free(self.eps)

    def __len__(self):
        return self.n

    cdef object _item(self, uint32_t i):
        cdef zlb_ep_spec *s = &self.eps[i]
        cdef bytes packed = (<char *>s.addr)[:4 if s.family == 4 else 16]
        address = _socket.inet_ntop(_socket.AF_INET if s.family == 4 else _socket.AF_INET6, packed)
        return _model_endpoint()(address, s.port, s.weight, s.priority, self.zones[s.zone],
                                 _HEALTH_NAMES[s.health])

    def __getitem__(self, index):
        if isinstance(index, slice):
            return tuple(self._item(i) for i in range(*index.indices(self.n)))
        cdef Py_ssize_t i = index
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError("EndpointTable index out of range")
        return self._item(<uint32_t>i)

    def __iter__(self):
        for i in range(self.n):
            yield self._item(i)

    def __eq__(self, other):
        if isinstance(other, EndpointTable):
            return self._same(<EndpointTable>other)
        if isinstance(other, (str, bytes)) or not isinstance(other, collections.abc.Sequence):
            return NotImplemented
        return len(other) == self.n and all(a == b for a, b in zip(self, other))

    cdef bint _same(self, EndpointTable other):
        if other.n != self.n:
            return False
        cdef zlb_ep_spec *a
        cdef zlb_ep_spec *b
        for i in range(self.n):
            a = &self.eps[i]
            b = &other.eps[i]
            if (a.family != b.family or a.port != b.port or a.weight != b.weight or a.priority != b.priority
                    or a.health != b.health or memcmp(a.addr, b.addr, 16) != 0
                    or self.zones[a.zone] != other.zones[b.zone]):
                return False
        return True

    def __hash__(self):
        return hash(tuple(self))  # what an equal tuple hashes to

    def __repr__(self):
        return f"EndpointTable({self.n} endpoints, zones {list(self.zones)!r})"

    def priority_counts(self):
        """{priority: number of endpoints}, without making Endpoint objects."""
        counts = {}
        for i in range(self.n):
            p = self.eps[i].priority
            counts[p] = counts.get(p, 0) + 1
        return counts


collections.abc.Sequence.register(EndpointTable)


cdef class EdsDecoder:
    """Decodes serialized ClusterLoadAssignments whose every field and value the model takes as it is.

    max_weight, max_priority and max_zone_bytes are the model's limits; health_of maps Envoy HealthStatus
    numbers 0..5 to model health names, any other number is health_other."""
    cdef zlb_eds_limits lim

    def __cinit__(self, uint32_t max_weight, uint32_t max_priority, uint32_t max_zone_bytes, dict health_of,
                  str health_other):
        memset(&self.lim, 0, sizeof(self.lim))
        self.lim.max_weight = max_weight
        self.lim.max_priority = max_priority
        self.lim.max_zone_len = max_zone_bytes
        for status in range(6):
            self.lim.health_of[status] = HEALTH[health_of[status]]
        self.lim.health_other = HEALTH[health_other]

    def decode(self, bytes value not None):
        """(cluster_name, overprovisioning factor or None, EndpointTable), or None when the message is outside the
        plain subset (the caller's exact translation decides about it)."""
        cdef zlb_eds out
        cdef const uint8_t *buf = <const uint8_t *>(<char *>value)
        cdef size_t size = len(value)
        cdef int rc
        with nogil:
            rc = zlb_eds_decode(buf, size, &self.lim, &out)
        try:
            if rc == ZLB_EDS_NOMEM:
                raise MemoryError()
            if rc != ZLB_EDS_OK:
                return None
            table = EndpointTable()
            table.zones = tuple(out.zones[k].p[:out.zones[k].len].decode("ascii") for k in range(out.n_zones))
            table.eps = out.eps
            table.n = out.n
            out.eps = NULL  # the table owns them now
            name = out.name.p[:out.name.len].decode("ascii")
            return name, (None if out.overprovisioning < 0 else out.overprovisioning), table
        finally:
            zlb_eds_free(&out)
