/*
 * test_eds.c - the ClusterLoadAssignment decoder (csrc/eds.c) on hand-made
 * wire bytes: what it decodes, what it leaves to the exact path, that no
 * prefix of a message makes it read past the end (ASan), and the specs
 * going into a snapshot through zlb_snap_add_specs.
 * (Its agreement with the Python exact path is tests/xds/test_eds_translate.py.)
 */
#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

#include "eds.h"
#include "helpers.h"
#include "zt.h"

/* A protobuf writer just big enough for these tests. */
typedef struct wb {
    uint8_t b[512];
    size_t n;
} wb;

static void put_varint(wb *w, uint64_t v)
{
    do {
        w->b[w->n++] = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
        v >>= 7;
    } while (v);
}
static void put_u(wb *w, uint32_t field, uint64_t v)
{
    put_varint(w, (uint64_t)field << 3 | 0);
    put_varint(w, v);
}
static void put_bytes(wb *w, uint32_t field, const void *p, size_t len)
{
    put_varint(w, (uint64_t)field << 3 | 2);
    put_varint(w, len);
    memcpy(w->b + w->n, p, len);
    w->n += len;
}
static void put_msg(wb *w, uint32_t field, const wb *sub) { put_bytes(w, field, sub->b, sub->n); }
static void put_str(wb *w, uint32_t field, const char *s) { put_bytes(w, field, s, strlen(s)); }
static void put_wrapped(wb *w, uint32_t field, uint32_t v)
{
    wb u = {0};
    put_u(&u, 1, v);
    put_msg(w, field, &u);
}

/* LbEndpoint{endpoint{address{socket_address{address, port_value}}}, health_status, load_balancing_weight}. */
static void put_lb_endpoint(wb *w, const char *host, uint32_t port, uint32_t health, uint32_t weight)
{
    wb sa = {0}, addr = {0}, ep = {0}, lb = {0};
    put_str(&sa, 2, host);
    put_u(&sa, 3, port);
    put_msg(&addr, 1, &sa);
    put_msg(&ep, 1, &addr);
    put_msg(&lb, 1, &ep);
    if (health)
        put_u(&lb, 2, health);
    if (weight)
        put_wrapped(&lb, 4, weight);
    put_msg(w, 2, &lb);
}

static const zlb_eds_limits LIMITS = {
    .max_weight = 1000000,
    .max_priority = 127,
    .max_zone_len = 127,
    .health_of = {ZLB_HEALTHY, ZLB_HEALTHY, ZLB_UNHEALTHY, ZLB_UNHEALTHY, ZLB_UNHEALTHY, ZLB_DEGRADED},
    .health_other = ZLB_UNHEALTHY,
};

/* cluster "web": locality zone "z" priority 2 (written after its endpoints, as serializers do) with
 * 10.0.0.1:80 (weight 3, DEGRADED) and [2001:db8::1]:443; a locality without one with 10.0.0.2:81;
 * overprovisioning 150. */
static void sample(wb *w)
{
    wb loc = {0}, locality = {0}, loc2 = {0}, policy = {0};
    memset(w, 0, sizeof(*w));
    put_str(w, 1, "web");
    put_str(&locality, 1, "region");
    put_str(&locality, 2, "z");
    put_msg(&loc, 1, &locality);
    put_lb_endpoint(&loc, "10.0.0.1", 80, 5, 3);
    put_lb_endpoint(&loc, "2001:db8::1", 443, 0, 0);
    put_u(&loc, 5, 2);
    put_msg(w, 2, &loc);
    put_lb_endpoint(&loc2, "10.0.0.2", 81, 0, 0);
    put_msg(w, 2, &loc2);
    put_wrapped(&policy, 3, 150);
    put_msg(w, 4, &policy);
}

/* Decodes len bytes from an exact-size heap copy, so ASan sees any read past the end. */
static int decode(const uint8_t *p, size_t len, zlb_eds *out)
{
    uint8_t *copy = malloc(len ? len : 1);
    memcpy(copy, p, len);
    int rc = zlb_eds_decode(copy, len, &LIMITS, out);
    if (rc == ZLB_EDS_OK) { /* spans point into the input: check them before it goes */
        rc = out->name.len == 3 && memcmp(out->name.p, "web", 3) == 0 ? rc : -42;
    }
    free(copy);
    return rc;
}

static void test_decodes_the_plain_subset(void)
{
    wb w;
    sample(&w);
    zlb_eds out;
    ZT_CHECK(zlb_eds_decode(w.b, w.n, &LIMITS, &out) == ZLB_EDS_OK);
    ZT_CHECK(out.name.len == 3 && memcmp(out.name.p, "web", 3) == 0);
    ZT_CHECK(out.overprovisioning == 150 && out.n == 3 && out.n_zones == 2);
    ZT_CHECK(out.zones[0].len == 1 && out.zones[0].p[0] == 'z' && out.zones[1].len == 0);
    const zlb_ep_spec *a = &out.eps[0], *b = &out.eps[1], *c = &out.eps[2];
    uint8_t v4[4], v6[16];
    inet_pton(AF_INET, "10.0.0.1", v4);
    inet_pton(AF_INET6, "2001:db8::1", v6);
    ZT_CHECK(a->family == 4 && memcmp(a->addr, v4, 4) == 0 && a->port == 80 && a->weight == 3);
    ZT_CHECK(a->health == ZLB_DEGRADED && a->priority == 2 && a->zone == 0);
    ZT_CHECK(b->family == 6 && memcmp(b->addr, v6, 16) == 0 && b->port == 443 && b->weight == 1);
    ZT_CHECK(b->health == ZLB_HEALTHY && b->priority == 2 && b->zone == 0);
    ZT_CHECK(c->family == 4 && c->port == 81 && c->priority == 0 && c->zone == 1);
    zlb_eds_free(&out);
}

/* Appends one more endpoint (to a locality of its own) to the sample. */
static int sample_plus(const char *host, uint32_t port, uint32_t health, uint32_t weight, uint32_t priority)
{
    wb w, loc = {0};
    sample(&w);
    put_lb_endpoint(&loc, host, port, health, weight);
    if (priority)
        put_u(&loc, 5, priority);
    put_msg(&w, 2, &loc);
    zlb_eds out;
    int rc = zlb_eds_decode(w.b, w.n, &LIMITS, &out);
    zlb_eds_free(&out);
    return rc;
}

static void test_leaves_the_unusual_to_the_exact_path(void)
{
    ZT_CHECK(sample_plus("10.0.0.9", 80, 0, 0, 127) == ZLB_EDS_OK);
    ZT_CHECK(sample_plus("10.0.0.1", 80, 0, 0, 0) == ZLB_EDS_SLOW);     /* duplicate */
    ZT_CHECK(sample_plus("2001:db8:0::1", 443, 0, 0, 0) == ZLB_EDS_SLOW); /* the same, spelled otherwise */
    ZT_CHECK(sample_plus("backend", 80, 0, 0, 0) == ZLB_EDS_SLOW);
    ZT_CHECK(sample_plus("10.0.0.9", 0, 0, 0, 0) == ZLB_EDS_SLOW);
    ZT_CHECK(sample_plus("10.0.0.9", 65536, 0, 0, 0) == ZLB_EDS_SLOW);
    ZT_CHECK(sample_plus("10.0.0.9", 80, 0, 1000001, 0) == ZLB_EDS_SLOW);
    ZT_CHECK(sample_plus("10.0.0.9", 80, 0, 0, 128) == ZLB_EDS_SLOW);
    ZT_CHECK(sample_plus("224.0.0.1", 80, 0, 0, 0) == ZLB_EDS_SLOW);
    ZT_CHECK(sample_plus("0.0.0.0", 80, 0, 0, 0) == ZLB_EDS_SLOW);
    ZT_CHECK(sample_plus("::1", 80, 0, 0, 0) == ZLB_EDS_SLOW);
    ZT_CHECK(sample_plus("ff02::1", 80, 0, 0, 0) == ZLB_EDS_SLOW);
    ZT_CHECK(sample_plus("10.0.0.9", 80, 77, 0, 0) == ZLB_EDS_OK); /* unknown health: unhealthy */

    wb w;
    zlb_eds out;
    sample(&w);
    put_str(&w, 5, "x"); /* named_endpoints: unsupported */
    ZT_CHECK(zlb_eds_decode(w.b, w.n, &LIMITS, &out) == ZLB_EDS_SLOW);
    zlb_eds_free(&out);
    sample(&w);
    put_str(&w, 1, "web"); /* cluster_name twice */
    ZT_CHECK(zlb_eds_decode(w.b, w.n, &LIMITS, &out) == ZLB_EDS_SLOW);
    zlb_eds_free(&out);
    sample(&w);
    w.b[w.n++] = 0x08; /* field 1 as a varint: the wrong wire type */
    w.b[w.n++] = 0x01;
    ZT_CHECK(zlb_eds_decode(w.b, w.n, &LIMITS, &out) == ZLB_EDS_SLOW);
    zlb_eds_free(&out);
    const uint8_t overlong[] = {0x0a, 0x01, 'c', 0x12, 0x0b, 0x28, 0xff, 0xff, 0xff, 0xff,
                                0xff, 0xff, 0xff, 0xff, 0xff, 0x02}; /* priority: a varint over 64 bits */
    ZT_CHECK(zlb_eds_decode(overlong, sizeof(overlong), &LIMITS, &out) == ZLB_EDS_SLOW);
    zlb_eds_free(&out);
    /* Tags and lengths: upb takes 5-byte varints, refuses 6-byte ones (zero either way here). */
    const uint8_t len5[] = {0x0a, 0x01, 'c', 0x12, 0x80, 0x80, 0x80, 0x80, 0x00};
    ZT_CHECK(zlb_eds_decode(len5, sizeof(len5), &LIMITS, &out) == ZLB_EDS_OK);
    zlb_eds_free(&out);
    const uint8_t len6[] = {0x0a, 0x01, 'c', 0x12, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00};
    ZT_CHECK(zlb_eds_decode(len6, sizeof(len6), &LIMITS, &out) == ZLB_EDS_SLOW);
    zlb_eds_free(&out);
    const uint8_t tag6[] = {0x0a, 0x01, 'c', 0x92, 0x80, 0x80, 0x80, 0x80, 0x00, 0x00};
    ZT_CHECK(zlb_eds_decode(tag6, sizeof(tag6), &LIMITS, &out) == ZLB_EDS_SLOW);
    zlb_eds_free(&out);
    const uint8_t nameless[] = {0x12, 0x00};
    ZT_CHECK(zlb_eds_decode(nameless, sizeof(nameless), &LIMITS, &out) == ZLB_EDS_SLOW);
    zlb_eds_free(&out);
}

/* The sample plus one endpoint carrying `metadata` (LbEndpoint field 3). */
static int sample_with_metadata(const uint8_t *md, size_t len)
{
    wb w, loc = {0}, lb = {0}, sa = {0}, addr = {0}, ep = {0};
    sample(&w);
    put_str(&sa, 2, "10.0.0.9");
    put_u(&sa, 3, 80);
    put_msg(&addr, 1, &sa);
    put_msg(&ep, 1, &addr);
    put_msg(&lb, 1, &ep);
    put_bytes(&lb, 3, md, len);
    put_msg(&loc, 2, &lb);
    put_msg(&w, 2, &loc);
    zlb_eds out;
    int rc = zlb_eds_decode(w.b, w.n, &LIMITS, &out);
    zlb_eds_free(&out);
    return rc;
}

/* filter_metadata {"k": Struct{fields {"a": Value}}} with Value a list in a list ... `levels` deep. */
static size_t nested_metadata(wb *out, int levels)
{
    wb value = {0}, entry = {0}, st = {0}, top = {0};
    for (int i = 0; i < levels; i++) {
        wb list = {0}, outer = {0};
        put_msg(&list, 1, &value);  /* ListValue.values */
        put_msg(&outer, 6, &list);  /* Value.list_value */
        value = outer;
    }
    put_str(&entry, 1, "a");
    put_msg(&entry, 2, &value);
    put_msg(&st, 1, &entry);
    put_str(&top, 1, "k");
    put_msg(&top, 2, &st);
    memset(out, 0, sizeof(*out));
    put_msg(out, 1, &top);
    return out->n;
}

static void test_metadata_is_walked_not_trusted(void)
{
    wb nested;
    /* filter_metadata {"k": Struct{fields {"a": Value{string_value: "b"}}}} */
    const uint8_t good[] = {0x0a, 0x0e, 0x0a, 0x01, 'k', 0x12, 0x09, 0x0a, 0x07, 0x0a, 0x01, 'a',
                            0x12, 0x02, 0x1a, 0x00};
    ZT_CHECK(sample_with_metadata(good, sizeof(good)) == ZLB_EDS_OK);
    uint8_t bad[sizeof(good)];
    memcpy(bad, good, sizeof(good));
    bad[8] = 0x09; /* the Struct's entry claims more bytes than it has */
    ZT_CHECK(sample_with_metadata(bad, sizeof(bad)) == ZLB_EDS_SLOW);
    memcpy(bad, good, sizeof(good));
    bad[15] = 0x01; /* string_value "" -> a length running past the end */
    ZT_CHECK(sample_with_metadata(bad, sizeof(bad)) == ZLB_EDS_SLOW);
    const uint8_t non_ascii[] = {0x0a, 0x05, 0x0a, 0x03, 0xc3, 0xa9, 'x'};
    ZT_CHECK(sample_with_metadata(non_ascii, sizeof(non_ascii)) == ZLB_EDS_SLOW);
    /* Lists nested deeper than the decoder walks are left to the exact path. */
    ZT_CHECK(sample_with_metadata(nested.b, nested_metadata(&nested, 10)) == ZLB_EDS_OK);
    ZT_CHECK(sample_with_metadata(nested.b, nested_metadata(&nested, 20)) == ZLB_EDS_SLOW);
}

static void test_no_prefix_reads_past_the_end(void)
{
    wb w;
    sample(&w);
    for (size_t len = 0; len <= w.n; len++) {
        zlb_eds out;
        int rc = decode(w.b, len, &out);
        ZT_CHECKF(rc == ZLB_EDS_OK || rc == ZLB_EDS_SLOW, "prefix %zu: %d", len, rc);
        ZT_CHECKF(len == w.n ? rc == ZLB_EDS_OK : 1, "the whole message: %d", rc);
        zlb_eds_free(&out);
    }
}

static void test_specs_go_into_a_snapshot(void)
{
    wb w;
    sample(&w);
    zlb_eds out;
    ZT_CHECK(zlb_eds_decode(w.b, w.n, &LIMITS, &out) == ZLB_EDS_OK);
    zlb_ep_registry *reg = zlb_ep_registry_new();
    zlb_snap_builder *b = zlb_snap_builder_new(reg, "z");
    zlb_cluster_opts o;
    zlb_cluster_opts_defaults(&o);
    zlb_strlcpy(o.name, "web", sizeof(o.name));
    char err[256] = "";
    int ci = zlb_snap_add_cluster(b, &o, err, sizeof(err));
    uint32_t zone_ids[2] = {(uint32_t)zlb_snap_zone_id(b, "z"), (uint32_t)zlb_snap_zone_id(b, "")};
    /* A bad zone index adds nothing. */
    ZT_CHECK(zlb_snap_add_specs(b, ci, out.eps, out.n, zone_ids, 1, err, sizeof(err)) < 0);
    ZT_CHECK(strstr(err, "zone 1 of 1") != NULL);
    ZT_CHECK(zlb_snap_add_specs(b, ci, out.eps, out.n, zone_ids, 2, err, sizeof(err)) == 0);
    zlb_snapshot *s = zlb_snap_build(b, 1, err, sizeof(err));
    ZT_CHECKF(s != NULL, "%s", err);
    zlb_cluster *c = &s->clusters[0];
    ZT_CHECK(c->n_endpoints == 3 && c->n_prios == 2);
    ZT_CHECK(strcmp(c->endpoints[0].name, "10.0.0.1:80") == 0 && c->endpoints[0].weight == 3);
    ZT_CHECK(strcmp(c->endpoints[1].name, "[2001:db8::1]:443") == 0 && c->endpoints[1].priority == 2);
    ZT_CHECK(strcmp(s->zones[c->endpoints[0].zone_id], "z") == 0 && c->endpoints[0].zone_id == s->local_zone_id);
    ZT_CHECK(c->endpoints[2].zone_id == 0 && c->endpoints[0].health == ZLB_DEGRADED);
    zlb_snapshot_free(s);
    zlb_snap_builder_free(b);
    zlb_ep_registry_free(reg);
    zlb_eds_free(&out);
}

int main(void)
{
    ZT_RUN(test_decodes_the_plain_subset);
    ZT_RUN(test_leaves_the_unusual_to_the_exact_path);
    ZT_RUN(test_metadata_is_walked_not_trusted);
    ZT_RUN(test_no_prefix_reads_past_the_end);
    ZT_RUN(test_specs_go_into_a_snapshot);
    return zt_summary();
}
