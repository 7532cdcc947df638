/* sockaddr.c - see sockaddr.h. */
#include "sockaddr.h"
#include "zlb_common.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

int zlb_sockaddr_parse(const char *host, uint16_t port, struct sockaddr_storage *ss, socklen_t *len)
{
    struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
    memset(ss, 0, sizeof(*ss));
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons(port);
        *len = sizeof(*a4);
        return 0;
    }
    if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons(port);
        *len = sizeof(*a6);
        return 0;
    }
    return -1;
}

/* Writes v in decimal at p; returns the end. */
static char *put_decimal(char *p, unsigned v)
{
    char digits[10];
    int n = 0;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        *p++ = digits[--n];
    return p;
}

void zlb_sockaddr_format(const struct sockaddr *sa, char *out, size_t outlen)
{
    char buf[INET6_ADDRSTRLEN];
    if (sa->sa_family == AF_INET) {
        /* By hand: glibc's inet_ntop and snprintf were most of the cost of
         * adding 10,000 endpoints to a snapshot. The same dotted decimal. */
        const struct sockaddr_in *a4 = (const struct sockaddr_in *)sa;
        const unsigned char *b = (const unsigned char *)&a4->sin_addr;
        char text[sizeof("255.255.255.255:65535")];
        char *p = text;
        for (int i = 0; i < 4; i++) {
            p = put_decimal(p, b[i]);
            *p++ = i < 3 ? '.' : ':';
        }
        p = put_decimal(p, ntohs(a4->sin_port));
        *p = '\0';
        if (outlen > 0)
            zlb_strlcpy(out, text, outlen);
    } else if (sa->sa_family == AF_INET6) {
        /* inet_ntop gives the canonical form, so "::0001" and "::1" name the
         * same endpoint. */
        const struct sockaddr_in6 *a6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &a6->sin6_addr, buf, sizeof(buf));
        snprintf(out, outlen, "[%s]:%u", buf, (unsigned)ntohs(a6->sin6_port));
    } else if (outlen > 0) {
        out[0] = '\0';
    }
}
