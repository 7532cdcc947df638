/*
 * krelay.h - the kernel relay: plaintext TCP connections whose bytes stay in
 * the kernel.
 *
 * Why: on a proxied request/response exchange the worker's own cost is a
 * wake-up, a recv and a send per message. With the relay, a BPF program of
 * type sk_skb (verdict) hands each arriving skb of one socket straight to the
 * send path of its peer socket (the sockmap mechanism), so a message costs
 * no system call and no wake-up of the worker; the worker only sees the ends
 * of the connection (FIN, RST) and its timers.
 *
 * Three kernel objects, shared by every worker of an engine:
 *   peers    BPF hash: socket cookie -> {peer's cookie, bytes relayed from it}
 *   targets  SOCKHASH without programs: every linked socket, by cookie; the
 *            program redirects into it
 *   sources  SOCKHASH with the verdict program attached: data arriving on a
 *            socket in it runs the program
 * A socket joins `targets` before `sources`, and both sockets of a pair join
 * `targets` before either joins `sources`: so whenever the program runs, the
 * peer it redirects to is there (otherwise the kernel would drop bytes it has
 * already acknowledged).
 *
 * Threads: zlb_krelay_open/free on the control thread; the rest on the worker
 * that owns the connection (the kernel objects are safe to use from any
 * thread; a link belongs to one worker).
 */
#ifndef ZLB_KRELAY_H
#define ZLB_KRELAY_H

#include <stddef.h>
#include <stdint.h>

typedef struct zlb_krelay zlb_krelay;

/* The relay's view of one proxied connection; side 0 is the client socket,
 * side 1 the upstream socket, and direction i reads from side i. */
typedef struct zlb_krelay_pair {
    uint64_t cookie[2];      /* SO_COOKIE of each side */
    uint64_t queued_base[2]; /* bytes each side's socket had taken for sending before the link */
    uint64_t relayed[2];     /* bytes read from side i and handed to side 1 - i, as last read */
} zlb_krelay_pair;

/* Loads the program and creates the maps for up to max_connections linked
 * connections at once (kernel memory is taken per linked socket, not up
 * front). NULL with err set when the kernel or the process's privileges
 * (CAP_BPF and CAP_NET_ADMIN, or root) do not allow it. */
zlb_krelay *zlb_krelay_open(uint32_t max_connections, char *err, size_t errlen);
/* Frees the relay; every link must be gone (the sockets closed). */
void zlb_krelay_free(zlb_krelay *r);

/* Moves connection fd[0] <-> fd[1] into the kernel. The caller must have
 * written everything it read from either socket (nothing of it may still
 * wait in user space) and must not read either socket afterwards; bytes the
 * sockets hold unread are relayed too. 0 and *l filled; -1 when the link
 * is not possible now (errno says why, EAGAIN: a socket still has unacked
 * bytes; try again later), with nothing left behind: the caller goes on
 * proxying in user space. */
int zlb_krelay_link(zlb_krelay *r, const int fd[2], zlb_krelay_pair *l);
/* Forgets the link's entries. Call it before closing the sockets. */
void zlb_krelay_unlink(zlb_krelay *r, const zlb_krelay_pair *l);
/* Reads the byte counters into l->relayed; returns 1 when they moved since
 * the last call, else 0. */
int zlb_krelay_refresh(zlb_krelay *r, zlb_krelay_pair *l);
/* After side `dir` reached its end of stream: 1 when every byte it received
 * has been handed to the other side's socket (so a FIN sent now follows
 * them), else 0 (ask again later: the kernel's work queue still holds some).
 * Refreshes l->relayed. */
int zlb_krelay_drained(zlb_krelay *r, zlb_krelay_pair *l, int dir, const int fd[2]);

/* Linked connections alive in this process (tests assert it returns to 0). */
int64_t zlb_debug_live_krelay_links(void);

#endif
