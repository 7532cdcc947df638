/*
 * eds.c - the plain-subset ClusterLoadAssignment decoder (see eds.h).
 *
 * Field numbers are Envoy's (envoy/config/endpoint/v3/endpoint.proto,
 * endpoint_components.proto, envoy/config/core/v3/address.proto, base.proto);
 * which fields count as supported is the list _EDS_FIELDS in
 * zlbfast/xds/resources.py, which tests/xds/test_eds_translate.py compares
 * with this decoder message by message.
 *
 * Every decode_* function returns ZLB_EDS_OK, ZLB_EDS_SLOW or ZLB_EDS_NOMEM;
 * TRY() passes anything but OK up at once.
 */
#include "eds.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define TRY(expr)                   \
    do {                            \
        int rc_ = (expr);           \
        if (rc_ != ZLB_EDS_OK)      \
            return rc_;             \
    } while (0)

/* ---- wire format ------------------------------------------------------ */

enum { WT_VARINT = 0, WT_I64 = 1, WT_LEN = 2, WT_I32 = 5 };

/* The unread part of one message. */
typedef struct rd {
    const uint8_t *p, *end;
} rd;

/* A varint of at most max_bytes bytes that fits 64 bits; SLOW when
 * truncated or longer (the exact decoder then reports it). */
static int rd_varint_max(rd *r, uint64_t *v, int max_bytes)
{
    uint64_t x = 0;
    for (int i = 0; i < max_bytes; i++) {
        if (r->p >= r->end)
            return ZLB_EDS_SLOW;
        uint8_t b = *r->p++;
        if (i == 9 && b > 1)
            return ZLB_EDS_SLOW; /* beyond 64 bits */
        x |= (uint64_t)(b & 0x7f) << (7 * i);
        if (!(b & 0x80)) {
            *v = x;
            return ZLB_EDS_OK;
        }
    }
    return ZLB_EDS_SLOW;
}

/* A value: up to 10 bytes, as protobuf allows. */
static int rd_varint(rd *r, uint64_t *v)
{
    return rd_varint_max(r, v, 10);
}

static int rd_u32(rd *r, uint32_t *v)
{
    uint64_t x;
    TRY(rd_varint(r, &x));
    if (x > UINT32_MAX)
        return ZLB_EDS_SLOW; /* the exact decoder truncates; let it */
    *v = (uint32_t)x;
    return ZLB_EDS_OK;
}

/* Next field's number and wire type. Tags and lengths are 32-bit varints
 * of at most 5 bytes to the exact decoder (upb), which refuses longer ones. */
static int rd_tag(rd *r, uint32_t *field, uint32_t *wt)
{
    uint64_t tag;
    TRY(rd_varint_max(r, &tag, 5));
    if (tag > UINT32_MAX)
        return ZLB_EDS_SLOW;
    *field = (uint32_t)(tag >> 3);
    *wt = (uint32_t)(tag & 7);
    return *field ? ZLB_EDS_OK : ZLB_EDS_SLOW;
}

/* The body of a length-delimited field. */
static int rd_sub(rd *r, rd *sub)
{
    uint64_t len;
    TRY(rd_varint_max(r, &len, 5));
    if (len > (uint64_t)(r->end - r->p))
        return ZLB_EDS_SLOW;
    sub->p = r->p;
    sub->end = r->p + len;
    r->p += len;
    return ZLB_EDS_OK;
}

/* Marks field `bit` of a singular field as seen. A singular field that
 * appears twice is legal protobuf (last one wins, messages merge) but never
 * written by a serializer: left to the exact decoder. */
static int once(uint32_t *seen, uint32_t bit)
{
    if (*seen & (1u << bit))
        return ZLB_EDS_SLOW;
    *seen |= 1u << bit;
    return ZLB_EDS_OK;
}

/* Text that is valid UTF-8 because it is ASCII (what the exact decoder
 * would check is left to it). */
static int ascii(const rd *s)
{
    for (const uint8_t *p = s->p; p < s->end; p++)
        if (*p >= 0x80)
            return ZLB_EDS_SLOW;
    return ZLB_EDS_OK;
}

/* google.protobuf.UInt32Value. */
static int decode_u32_value(rd m, uint32_t *value)
{
    uint32_t field, wt, seen = 0;
    *value = 0;
    while (m.p < m.end) {
        TRY(rd_tag(&m, &field, &wt));
        if (field != 1 || wt != WT_VARINT)
            return ZLB_EDS_SLOW;
        TRY(once(&seen, 1));
        TRY(rd_u32(&m, value));
    }
    return ZLB_EDS_OK;
}

/* ---- metadata ------------------------------------------------------------- */

/* envoy.config.core.v3.Metadata and the google.protobuf.Struct/Value/ListValue/
 * Any inside it: labels zlbfast does not read, walked only so that the
 * decoder accepts no metadata the exact path's parser would refuse (strings
 * must be UTF-8 there: ASCII here; anything unusual is left to it). */
#define METADATA_MAX_DEPTH 32

static int check_value(rd m, int depth);
static int check_struct(rd m, int depth);

static int rd_skip_fixed64(rd *r)
{
    if (r->end - r->p < 8)
        return ZLB_EDS_SLOW;
    r->p += 8;
    return ZLB_EDS_OK;
}

/* A map entry: key (1, a string), value (2, checked by `value`). */
static int check_entry(rd m, int depth, int (*value)(rd, int))
{
    uint32_t field, wt, seen = 0;
    rd sub;
    if (depth > METADATA_MAX_DEPTH)
        return ZLB_EDS_SLOW;
    while (m.p < m.end) {
        TRY(rd_tag(&m, &field, &wt));
        if (wt != WT_LEN || (field != 1 && field != 2))
            return ZLB_EDS_SLOW;
        TRY(once(&seen, field));
        TRY(rd_sub(&m, &sub));
        TRY(field == 1 ? ascii(&sub) : value(sub, depth + 1));
    }
    return ZLB_EDS_OK;
}

/* google.protobuf.Any: type_url (1), value (2, opaque). */
static int check_any(rd m, int depth)
{
    uint32_t field, wt, seen = 0;
    rd sub;
    (void)depth;
    while (m.p < m.end) {
        TRY(rd_tag(&m, &field, &wt));
        if (wt != WT_LEN || (field != 1 && field != 2))
            return ZLB_EDS_SLOW;
        TRY(once(&seen, field));
        TRY(rd_sub(&m, &sub));
        if (field == 1)
            TRY(ascii(&sub));
    }
    return ZLB_EDS_OK;
}

static int check_list(rd m, int depth)
{
    uint32_t field, wt;
    rd sub;
    if (depth > METADATA_MAX_DEPTH)
        return ZLB_EDS_SLOW;
    while (m.p < m.end) {
        TRY(rd_tag(&m, &field, &wt));
        if (field != 1 || wt != WT_LEN)
            return ZLB_EDS_SLOW;
        TRY(rd_sub(&m, &sub));
        TRY(check_value(sub, depth + 1));
    }
    return ZLB_EDS_OK;
}

/* google.protobuf.Value: one of null (1), number (2), string (3), bool (4),
 * struct (5), list (6). */
static int check_value(rd m, int depth)
{
    uint32_t field, wt;
    uint64_t scalar;
    rd sub;
    int fields = 0;
    if (depth > METADATA_MAX_DEPTH)
        return ZLB_EDS_SLOW;
    while (m.p < m.end) {
        if (fields++) /* a oneof set twice: the last wins, left to the exact path */
            return ZLB_EDS_SLOW;
        TRY(rd_tag(&m, &field, &wt));
        if ((field == 1 || field == 4) && wt == WT_VARINT) {
            TRY(rd_varint(&m, &scalar));
        } else if (field == 2 && wt == WT_I64) {
            TRY(rd_skip_fixed64(&m));
        } else if (field >= 3 && field <= 6 && field != 4 && wt == WT_LEN) {
            TRY(rd_sub(&m, &sub));
            TRY(field == 3 ? ascii(&sub) : field == 5 ? check_struct(sub, depth + 1) : check_list(sub, depth + 1));
        } else {
            return ZLB_EDS_SLOW;
        }
    }
    return ZLB_EDS_OK;
}

/* google.protobuf.Struct: fields (1), a map of string to Value. */
static int check_struct(rd m, int depth)
{
    uint32_t field, wt;
    rd sub;
    while (m.p < m.end) {
        TRY(rd_tag(&m, &field, &wt));
        if (field != 1 || wt != WT_LEN)
            return ZLB_EDS_SLOW;
        TRY(rd_sub(&m, &sub));
        TRY(check_entry(sub, depth, check_value));
    }
    return ZLB_EDS_OK;
}

/* envoy.config.core.v3.Metadata: filter_metadata (1, string to Struct) and
 * typed_filter_metadata (2, string to Any). */
static int check_metadata(rd m)
{
    uint32_t field, wt;
    rd sub;
    while (m.p < m.end) {
        TRY(rd_tag(&m, &field, &wt));
        if (wt != WT_LEN || (field != 1 && field != 2))
            return ZLB_EDS_SLOW;
        TRY(rd_sub(&m, &sub));
        TRY(check_entry(sub, 0, field == 1 ? check_struct : check_any));
    }
    return ZLB_EDS_OK;
}

/* ---- endpoints ----------------------------------------------------------- */

/* The rule of zlbfast.config._plain_backend_ip: a backend address that is
 * certainly fine. The others (multicast, unspecified, IPv4-mapped ...) are for
 * the exact path and the model's validation to judge and name. */
static int plain_backend(const zlb_ep_spec *s)
{
    static const uint8_t zero10[10];
    if (s->family == 4)
        return s->addr[0] < 224 && memcmp(s->addr, zero10, 4) != 0;
    return s->addr[0] != 0xff && memcmp(s->addr, zero10, 10) != 0;
}

/* envoy.config.core.v3.SocketAddress: protocol (TCP only), address, port_value. */
static int decode_socket_address(rd m, zlb_ep_spec *s)
{
    uint32_t field, wt, seen = 0, protocol = 0, port = 0;
    rd addr = {0};
    while (m.p < m.end) {
        TRY(rd_tag(&m, &field, &wt));
        if (field == 1 && wt == WT_VARINT) {
            TRY(once(&seen, 1));
            TRY(rd_u32(&m, &protocol));
        } else if (field == 2 && wt == WT_LEN) {
            TRY(once(&seen, 2));
            TRY(rd_sub(&m, &addr));
        } else if (field == 3 && wt == WT_VARINT) {
            TRY(once(&seen, 3));
            TRY(rd_u32(&m, &port));
        } else {
            return ZLB_EDS_SLOW;
        }
    }
    if (protocol != 0 || port < 1 || port > 65535)
        return ZLB_EDS_SLOW;
    char text[64];
    size_t len = (size_t)(addr.end - addr.p);
    if (len == 0 || len >= sizeof(text) || memchr(addr.p, 0, len))
        return ZLB_EDS_SLOW;
    memcpy(text, addr.p, len);
    text[len] = '\0';
    /* The same choice as zlbfast.xds.resources.canonical_ip. */
    int v6 = memchr(text, ':', len) != NULL;
    if (inet_pton(v6 ? AF_INET6 : AF_INET, text, s->addr) != 1)
        return ZLB_EDS_SLOW;
    s->family = v6 ? 6 : 4;
    s->port = (uint16_t)port;
    return plain_backend(s) ? ZLB_EDS_OK : ZLB_EDS_SLOW;
}

/* envoy.config.core.v3.Address: socket_address only. */
static int decode_address(rd m, zlb_ep_spec *s)
{
    uint32_t field, wt, seen = 0;
    rd sub;
    while (m.p < m.end) {
        TRY(rd_tag(&m, &field, &wt));
        if (field != 1 || wt != WT_LEN)
            return ZLB_EDS_SLOW;
        TRY(once(&seen, 1));
        TRY(rd_sub(&m, &sub));
        TRY(decode_socket_address(sub, s));
    }
    return seen ? ZLB_EDS_OK : ZLB_EDS_SLOW;
}

/* envoy.config.endpoint.v3.Endpoint: address, hostname (a label). */
static int decode_endpoint(rd m, zlb_ep_spec *s)
{
    uint32_t field, wt, seen = 0;
    rd sub;
    while (m.p < m.end) {
        TRY(rd_tag(&m, &field, &wt));
        if (wt != WT_LEN || (field != 1 && field != 3))
            return ZLB_EDS_SLOW; /* health_check_config, additional_addresses ... */
        TRY(once(&seen, field));
        TRY(rd_sub(&m, &sub));
        TRY(field == 1 ? decode_address(sub, s) : ascii(&sub));
    }
    return seen & (1u << 1) ? ZLB_EDS_OK : ZLB_EDS_SLOW;
}

/* envoy.config.endpoint.v3.LbEndpoint: endpoint, health_status, metadata
 * (a label), load_balancing_weight. */
static int decode_lb_endpoint(rd m, const zlb_eds_limits *lim, zlb_ep_spec *s)
{
    uint32_t field, wt, seen = 0, health = 0, weight = 1;
    rd sub;
    while (m.p < m.end) {
        TRY(rd_tag(&m, &field, &wt));
        if (field == 1 && wt == WT_LEN) {
            TRY(once(&seen, 1));
            TRY(rd_sub(&m, &sub));
            TRY(decode_endpoint(sub, s));
        } else if (field == 2 && wt == WT_VARINT) {
            TRY(once(&seen, 2));
            TRY(rd_u32(&m, &health));
        } else if (field == 3 && wt == WT_LEN) {
            TRY(once(&seen, 3));
            TRY(rd_sub(&m, &sub));
            TRY(check_metadata(sub));
        } else if (field == 4 && wt == WT_LEN) {
            TRY(once(&seen, 4));
            TRY(rd_sub(&m, &sub));
            TRY(decode_u32_value(sub, &weight));
        } else {
            return ZLB_EDS_SLOW; /* endpoint_name, ... */
        }
    }
    if (!(seen & (1u << 1)) || weight < 1 || weight > lim->max_weight)
        return ZLB_EDS_SLOW;
    s->weight = weight;
    s->health = health < 6 ? lim->health_of[health] : lim->health_other;
    return ZLB_EDS_OK;
}

/* ---- localities ----------------------------------------------------------- */

/* Index of zone z among out->zones, added when new. */
static int zone_index(zlb_eds *out, rd z, uint16_t *index)
{
    uint32_t len = (uint32_t)(z.end - z.p);
    for (uint32_t i = 0; i < out->n_zones; i++) {
        if (out->zones[i].len == len && memcmp(out->zones[i].p, z.p, len) == 0) {
            *index = (uint16_t)i;
            return ZLB_EDS_OK;
        }
    }
    if (out->n_zones == ZLB_EDS_MAX_ZONES)
        return ZLB_EDS_SLOW;
    if (out->n_zones == out->cap_zones) {
        uint32_t cap = out->cap_zones ? out->cap_zones * 2 : 8;
        zlb_eds_span *zones = realloc(out->zones, cap * sizeof(*zones));
        if (!zones)
            return ZLB_EDS_NOMEM;
        out->zones = zones;
        out->cap_zones = cap;
    }
    out->zones[out->n_zones] = (zlb_eds_span){(const char *)z.p, len};
    *index = (uint16_t)out->n_zones++;
    return ZLB_EDS_OK;
}

/* envoy.config.core.v3.Locality: region and sub_zone are labels; the zone
 * must be one the model takes as it is (printable ASCII, no spaces). */
static int decode_locality(rd m, const zlb_eds_limits *lim, rd *zone)
{
    uint32_t field, wt, seen = 0;
    rd sub;
    while (m.p < m.end) {
        TRY(rd_tag(&m, &field, &wt));
        if (wt != WT_LEN || field < 1 || field > 3)
            return ZLB_EDS_SLOW;
        TRY(once(&seen, field));
        TRY(rd_sub(&m, &sub));
        TRY(ascii(&sub));
        if (field == 2)
            *zone = sub;
    }
    if ((size_t)(zone->end - zone->p) > lim->max_zone_len)
        return ZLB_EDS_SLOW;
    for (const uint8_t *p = zone->p; p < zone->end; p++)
        if (*p <= 0x20 || *p >= 0x7f)
            return ZLB_EDS_SLOW;
    return ZLB_EDS_OK;
}

static int push_spec(zlb_eds *out, zlb_ep_spec **s)
{
    if (out->n == out->cap) {
        if (out->cap > UINT32_MAX / 2)
            return ZLB_EDS_SLOW;
        uint32_t cap = out->cap ? out->cap * 2 : 64;
        zlb_ep_spec *eps = realloc(out->eps, (size_t)cap * sizeof(*eps));
        if (!eps)
            return ZLB_EDS_NOMEM;
        out->eps = eps;
        out->cap = cap;
    }
    *s = &out->eps[out->n];
    memset(*s, 0, sizeof(**s));
    return ZLB_EDS_OK;
}

/* envoy.config.endpoint.v3.LocalityLbEndpoints. Serializers write
 * lb_endpoints (2) before priority (5), so a first pass reads the locality's
 * own fields and a second one its endpoints. */
static int decode_locality_endpoints(rd m, const zlb_eds_limits *lim, zlb_eds *out)
{
    static const uint8_t no_zone[1];
    uint32_t field, wt, seen = 0, priority = 0, ignored;
    rd sub, zone = {no_zone, no_zone}, all = m;
    while (m.p < m.end) {
        TRY(rd_tag(&m, &field, &wt));
        if (field == 1 && wt == WT_LEN) {
            TRY(once(&seen, 1));
            TRY(rd_sub(&m, &sub));
            TRY(decode_locality(sub, lim, &zone));
        } else if (field == 2 && wt == WT_LEN) {
            TRY(rd_sub(&m, &sub)); /* second pass */
        } else if (field == 3 && wt == WT_LEN) {
            /* Locality weights are accepted and not used (docs/xds.md). */
            TRY(once(&seen, 3));
            TRY(rd_sub(&m, &sub));
            TRY(decode_u32_value(sub, &ignored));
        } else if (field == 5 && wt == WT_VARINT) {
            TRY(once(&seen, 5));
            TRY(rd_u32(&m, &priority));
        } else {
            return ZLB_EDS_SLOW; /* proximity, metadata, load_balancer_endpoints, ... */
        }
    }
    if (priority > lim->max_priority)
        return ZLB_EDS_SLOW;
    uint16_t zi;
    TRY(zone_index(out, zone, &zi));
    m = all;
    while (m.p < m.end) {
        TRY(rd_tag(&m, &field, &wt));
        if (field != 2) { /* read in the first pass */
            uint64_t skipped;
            TRY(wt == WT_VARINT ? rd_varint(&m, &skipped) : rd_sub(&m, &sub));
            continue;
        }
        TRY(rd_sub(&m, &sub));
        zlb_ep_spec *s;
        TRY(push_spec(out, &s));
        TRY(decode_lb_endpoint(sub, lim, s));
        s->priority = (uint16_t)priority;
        s->zone = zi;
        out->n++;
    }
    return ZLB_EDS_OK;
}

/* ---- the assignment -------------------------------------------------------- */

/* envoy.config.endpoint.v3.ClusterLoadAssignment.Policy: overprovisioning_factor. */
static int decode_policy(rd m, zlb_eds *out)
{
    uint32_t field, wt, seen = 0, factor;
    rd sub;
    while (m.p < m.end) {
        TRY(rd_tag(&m, &field, &wt));
        if (field != 3 || wt != WT_LEN)
            return ZLB_EDS_SLOW; /* drop_overloads, endpoint_stale_after, ... */
        TRY(once(&seen, 3));
        TRY(rd_sub(&m, &sub));
        TRY(decode_u32_value(sub, &factor));
        out->overprovisioning = factor;
    }
    return ZLB_EDS_OK;
}

static uint64_t spec_hash(const zlb_ep_spec *s)
{
    uint64_t a, b;
    memcpy(&a, s->addr, 8);
    memcpy(&b, s->addr + 8, 8);
    uint64_t h = (a ^ ((uint64_t)s->port << 48 | (uint64_t)s->family << 40)) * 0x9E3779B97F4A7C15ULL;
    h = (h ^ (h >> 29) ^ b) * 0xBF58476D1CE4E5B9ULL;
    return h ^ (h >> 32);
}

static int same_address(const zlb_ep_spec *x, const zlb_ep_spec *y)
{
    return x->port == y->port && x->family == y->family && memcmp(x->addr, y->addr, 16) == 0;
}

/* SLOW when two endpoints share (address, port): the exact path names them. */
static int check_unique(const zlb_eds *out)
{
    if (out->n < 2)
        return ZLB_EDS_OK;
    uint64_t size = 16;
    while (size < 2 * (uint64_t)out->n)
        size *= 2;
    uint32_t *slots = calloc(size, sizeof(*slots)); /* endpoint index + 1, 0 = free */
    if (!slots)
        return ZLB_EDS_NOMEM;
    int rc = ZLB_EDS_OK;
    for (uint32_t i = 0; i < out->n && rc == ZLB_EDS_OK; i++) {
        uint64_t k = spec_hash(&out->eps[i]) & (size - 1);
        for (; slots[k]; k = (k + 1) & (size - 1)) {
            if (same_address(&out->eps[slots[k] - 1], &out->eps[i])) {
                rc = ZLB_EDS_SLOW;
                break;
            }
        }
        slots[k] = i + 1;
    }
    free(slots);
    return rc;
}

static int decode_assignment(rd m, const zlb_eds_limits *lim, zlb_eds *out)
{
    uint32_t field, wt, seen = 0;
    rd sub;
    while (m.p < m.end) {
        TRY(rd_tag(&m, &field, &wt));
        if (field == 1 && wt == WT_LEN) {
            TRY(once(&seen, 1));
            TRY(rd_sub(&m, &sub));
            TRY(ascii(&sub));
            if (memchr(sub.p, 0, (size_t)(sub.end - sub.p)))
                return ZLB_EDS_SLOW;
            out->name = (zlb_eds_span){(const char *)sub.p, (uint32_t)(sub.end - sub.p)};
        } else if (field == 2 && wt == WT_LEN) {
            TRY(rd_sub(&m, &sub));
            TRY(decode_locality_endpoints(sub, lim, out));
        } else if (field == 4 && wt == WT_LEN) {
            TRY(once(&seen, 4));
            TRY(rd_sub(&m, &sub));
            TRY(decode_policy(sub, out));
        } else {
            return ZLB_EDS_SLOW; /* named_endpoints, ... */
        }
    }
    if (out->name.len == 0)
        return ZLB_EDS_SLOW;
    return check_unique(out);
}

int zlb_eds_decode(const uint8_t *buf, size_t len, const zlb_eds_limits *lim, zlb_eds *out)
{
    memset(out, 0, sizeof(*out));
    out->overprovisioning = -1;
    rd m = {buf, buf + len};
    int rc = decode_assignment(m, lim, out);
    if (rc == ZLB_EDS_OK && out->n && out->n < out->cap) {
        /* Tables live as long as their assignment: give back the growth slack. */
        zlb_ep_spec *eps = realloc(out->eps, (size_t)out->n * sizeof(*eps));
        if (eps) {
            out->eps = eps;
            out->cap = out->n;
        }
    }
    return rc;
}

void zlb_eds_free(zlb_eds *out)
{
    free(out->eps);
    free(out->zones);
    memset(out, 0, sizeof(*out));
}
