/*
 * eds.h - decodes an Envoy v3 ClusterLoadAssignment (protobuf wire format,
 * as it comes off an xDS stream) straight into compact endpoint specs.
 *
 * EDS updates carry tens of thousands of endpoints; building a Python object
 * per endpoint was most of the cost of applying one. This decoder accepts
 * only the plain subset of the message: the fields zlbfast implements or
 * that only label things (docs/xds.md), in their usual encoding, with values
 * that the configuration model accepts as they are. Anything else (an
 * unsupported or unknown field, a repeated singular field, a value out of
 * range, a DNS name, a duplicate endpoint, non-ASCII text) makes it answer
 * ZLB_EDS_SLOW, and the caller translates the message on its exact path
 * (zlbfast/xds/resources.py), which names the offending field or accepts
 * what is merely unusual. So the decoder never has to be right about
 * rejecting, only about accepting.
 *
 * Pure functions: no globals, no locks, any thread.
 */
#ifndef ZLB_EDS_H
#define ZLB_EDS_H

#include <stddef.h>
#include <stdint.h>
#include "snapshot.h" /* zlb_ep_spec, zlb_health */

/* What the caller's model accepts; values outside make the decoder answer
 * ZLB_EDS_SLOW. */
typedef struct zlb_eds_limits {
    uint32_t max_weight;
    uint32_t max_priority;
    uint32_t max_zone_len;       /* bytes */
    uint8_t health_of[6];        /* zlb_health of each envoy HealthStatus 0..5 */
    uint8_t health_other;        /* of any other value */
} zlb_eds_limits;

typedef struct zlb_eds_span {
    const char *p;  /* points into the decoded buffer */
    uint32_t len;
} zlb_eds_span;

#define ZLB_EDS_MAX_ZONES 65535

typedef struct zlb_eds {
    zlb_eds_span name;               /* cluster_name, never empty */
    int64_t overprovisioning;    /* policy.overprovisioning_factor, -1 = not set */
    zlb_ep_spec *eps;            /* malloc'ed; the caller may take it (and then set it NULL) */
    uint32_t n, cap;
    zlb_eds_span *zones;             /* distinct zones in order of appearance, malloc'ed */
    uint32_t n_zones, cap_zones;
} zlb_eds;

enum { ZLB_EDS_NOMEM = -1, ZLB_EDS_SLOW = 0, ZLB_EDS_OK = 1 };

/* Decodes buf into *out (zeroed first). ZLB_EDS_OK: out holds the
 * assignment, which has no duplicate (address, port). ZLB_EDS_SLOW or
 * ZLB_EDS_NOMEM: out holds nothing to use. Either way, release out with
 * zlb_eds_free(). */
int zlb_eds_decode(const uint8_t *buf, size_t len, const zlb_eds_limits *lim, zlb_eds *out);
void zlb_eds_free(zlb_eds *out);

#endif
