/*
 * sockaddr.h - numeric IPv4/IPv6 socket addresses: parsing and the one
 * canonical text form used everywhere ("1.2.3.4:80", "[::1]:80"), so that
 * endpoint names, logs and the admin API agree. Thread-safe, no allocation.
 */
#ifndef ZLB_SOCKADDR_H
#define ZLB_SOCKADDR_H

#include <netinet/in.h>
#include <stddef.h>
#include <sys/socket.h>

#define ZLB_SOCKADDR_STR_MAX 64

/* Fills ss/len from a numeric literal (no brackets) and a port. 0 or -1. */
int zlb_sockaddr_parse(const char *host, uint16_t port, struct sockaddr_storage *ss, socklen_t *len);
/* Writes the canonical "ip:port" / "[ip6]:port" form; "" for AF_UNSPEC. */
void zlb_sockaddr_format(const struct sockaddr *sa, char *out, size_t outlen);
/* The same form at out, which has room for ZLB_SOCKADDR_STR_MAX bytes, not
 * NUL-terminated; returns its length (0 for AF_UNSPEC). For formatters that
 * append to a buffer of their own (the access log). */
size_t zlb_sockaddr_put(const struct sockaddr *sa, char *out);

#endif
