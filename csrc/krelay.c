/*
 * krelay.c - the kernel relay (krelay.h): the BPF program, its maps, and
 * linking connections into them.
 *
 * The program is a handful of instructions, so it is written here as BPF
 * instructions rather than compiled from C: no BPF compiler or libbpf is
 * needed to build or run zlbfast. In C it would read:
 *
 *     int verdict(struct __sk_buff *skb) {
 *         if (skb->len == 0)
 *             return SK_DROP;                 // the FIN: the worker forwards it
 *         __u64 me = bpf_get_socket_cookie(skb);
 *         struct peer *p = bpf_map_lookup_elem(&peers, &me);
 *         if (!p)
 *             return SK_PASS;                 // not linked (yet): the socket's own queue
 *         __sync_fetch_and_add(&p->relayed, skb->len);
 *         __u64 to = p->cookie;
 *         return bpf_sk_redirect_hash(skb, &targets, &to, 0);  // to the peer's send path
 *     }
 */
#define _GNU_SOURCE
#include "krelay.h"

#include "zlb_common.h"

#include <errno.h>
#include <linux/bpf.h>
#include <linux/sockios.h>
#include <linux/tcp.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

struct zlb_krelay {
    int peers_fd;    /* BPF_MAP_TYPE_HASH: cookie -> zlb_krelay_peer */
    int targets_fd;  /* SOCKHASH: cookie -> socket, redirect targets */
    int sources_fd;  /* SOCKHASH: cookie -> socket, runs the program */
    int prog_fd;
};

/* Value of the peers map, keyed by a socket's cookie. */
typedef struct zlb_krelay_peer {
    uint64_t cookie;     /* the peer socket's */
    uint64_t relayed;    /* bytes redirected from this socket to the peer (the program adds) */
} zlb_krelay_peer;

static _Atomic int64_t live_links;

int64_t zlb_debug_live_krelay_links(void) { return atomic_load(&live_links); }

static long sys_bpf(int cmd, union bpf_attr *a)
{
    return syscall(__NR_bpf, cmd, a, sizeof(*a));
}

static int map_create(uint32_t type, uint32_t key_size, uint32_t value_size, uint32_t max_entries,
                      uint32_t flags)
{
    union bpf_attr a;
    memset(&a, 0, sizeof(a));
    a.map_type = type;
    a.key_size = key_size;
    a.value_size = value_size;
    a.max_entries = max_entries;
    a.map_flags = flags;
    return (int)sys_bpf(BPF_MAP_CREATE, &a);
}

static int map_update(int map_fd, const void *key, const void *value, uint64_t flags)
{
    union bpf_attr a;
    memset(&a, 0, sizeof(a));
    a.map_fd = (uint32_t)map_fd;
    a.key = (uint64_t)(uintptr_t)key;
    a.value = (uint64_t)(uintptr_t)value;
    a.flags = flags;
    return (int)sys_bpf(BPF_MAP_UPDATE_ELEM, &a);
}

static int map_lookup(int map_fd, const void *key, void *value)
{
    union bpf_attr a;
    memset(&a, 0, sizeof(a));
    a.map_fd = (uint32_t)map_fd;
    a.key = (uint64_t)(uintptr_t)key;
    a.value = (uint64_t)(uintptr_t)value;
    return (int)sys_bpf(BPF_MAP_LOOKUP_ELEM, &a);
}

static void map_delete(int map_fd, const void *key)
{
    union bpf_attr a;
    memset(&a, 0, sizeof(a));
    a.map_fd = (uint32_t)map_fd;
    a.key = (uint64_t)(uintptr_t)key;
    sys_bpf(BPF_MAP_DELETE_ELEM, &a);
}

#define INSN(op, dst, src, offset, immediate) \
    ((struct bpf_insn){.code = (op), .dst_reg = (dst), .src_reg = (src), .off = (offset), .imm = (immediate)})
/* A 64-bit load of a map's address: two instruction slots. */
#define LD_MAP(dst, map_fd) \
    INSN(BPF_LD | BPF_IMM | BPF_DW, dst, BPF_PSEUDO_MAP_FD, 0, map_fd), INSN(0, 0, 0, 0, 0)

static int load_program(const zlb_krelay *r, char *err, size_t errlen)
{
    enum { R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, FP };
    /* Jump offsets count instructions from the one after the jump; the
     * labels' indexes are in the comments on the right. */
    const struct bpf_insn prog[] = {
        INSN(BPF_ALU64 | BPF_MOV | BPF_X, R6, R1, 0, 0),                   /*  0 r6 = skb */
        INSN(BPF_LDX | BPF_MEM | BPF_W, R1, R6, offsetof(struct __sk_buff, len), 0),
        INSN(BPF_JMP | BPF_JEQ | BPF_K, R1, 0, 23, 0),                    /*  2 empty (the FIN): drop */
        INSN(BPF_ALU64 | BPF_MOV | BPF_X, R1, R6, 0, 0),
        INSN(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_get_socket_cookie),
        INSN(BPF_STX | BPF_MEM | BPF_DW, FP, R0, -8, 0),                   /*  5 fp[-8] = my cookie */
        LD_MAP(R1, r->peers_fd),
        INSN(BPF_ALU64 | BPF_MOV | BPF_X, R2, FP, 0, 0),
        INSN(BPF_ALU64 | BPF_ADD | BPF_K, R2, 0, 0, -8),
        INSN(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_map_lookup_elem),      /* 10 */
        INSN(BPF_JMP | BPF_JEQ | BPF_K, R0, 0, 12, 0),                    /* 11 not linked: pass */
        INSN(BPF_LDX | BPF_MEM | BPF_W, R1, R6, offsetof(struct __sk_buff, len), 0),
        INSN(BPF_STX | BPF_ATOMIC | BPF_DW, R0, R1, offsetof(zlb_krelay_peer, relayed), BPF_ADD),
        INSN(BPF_LDX | BPF_MEM | BPF_DW, R1, R0, offsetof(zlb_krelay_peer, cookie), 0),
        INSN(BPF_STX | BPF_MEM | BPF_DW, FP, R1, -16, 0),                  /* 15 fp[-16] = peer's cookie */
        INSN(BPF_ALU64 | BPF_MOV | BPF_X, R1, R6, 0, 0),
        LD_MAP(R2, r->targets_fd),
        INSN(BPF_ALU64 | BPF_MOV | BPF_X, R3, FP, 0, 0),
        INSN(BPF_ALU64 | BPF_ADD | BPF_K, R3, 0, 0, -16),
        INSN(BPF_ALU64 | BPF_MOV | BPF_K, R4, 0, 0, 0),
        INSN(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_sk_redirect_hash),     /* 22 r0 = SK_PASS: redirected */
        INSN(BPF_JMP | BPF_EXIT, 0, 0, 0, 0),
        INSN(BPF_ALU64 | BPF_MOV | BPF_K, R0, 0, 0, SK_PASS),              /* 24 pass: */
        INSN(BPF_JMP | BPF_EXIT, 0, 0, 0, 0),
        INSN(BPF_ALU64 | BPF_MOV | BPF_K, R0, 0, 0, SK_DROP),              /* 26 drop: */
        INSN(BPF_JMP | BPF_EXIT, 0, 0, 0, 0),
    };
    union bpf_attr a;
    memset(&a, 0, sizeof(a));
    a.prog_type = BPF_PROG_TYPE_SK_SKB;
    a.insns = (uint64_t)(uintptr_t)prog;
    a.insn_cnt = sizeof(prog) / sizeof(prog[0]);
    /* The helpers used are not GPL-only; the kernel still wants a license string. */
    a.license = (uint64_t)(uintptr_t)"Dual MIT/GPL";
    int fd = (int)sys_bpf(BPF_PROG_LOAD, &a);
    if (fd >= 0)
        return fd;
    int e = errno;
    /* Again with the verifier's log, to say why: the line before its
     * closing statistics names the refused instruction. */
    size_t size = 1 << 16;
    char *log = calloc(1, size);
    const char *why = "";
    if (log) {
        a.log_buf = (uint64_t)(uintptr_t)log;
        a.log_size = (uint32_t)size;
        a.log_level = 1;
        if (sys_bpf(BPF_PROG_LOAD, &a) < 0) {
            size_t n = strlen(log);
            for (int lines = 0; n > 0; n--) {
                if (log[n - 1] == '\n')
                    log[n - 1] = '\0';
                else
                    continue;
                if (++lines == 3)
                    break;
            }
            why = log + n;
        }
    }
    snprintf(err, errlen, "loading the relay's BPF program: %s%s%s", strerror(e), *why ? ": " : "", why);
    free(log);
    errno = e;
    return fd;
}

zlb_krelay *zlb_krelay_open(uint32_t max_connections, char *err, size_t errlen)
{
    if (max_connections == 0 || max_connections > (1u << 24)) {
        snprintf(err, errlen, "kernel relay: max connections must be 1..%u", 1u << 24);
        return NULL;
    }
    zlb_krelay *r = calloc(1, sizeof(*r));
    if (!r) {
        snprintf(err, errlen, "kernel relay: out of memory");
        return NULL;
    }
    r->peers_fd = r->targets_fd = r->sources_fd = r->prog_fd = -1;
    uint32_t sockets = max_connections * 2;
    const char *what = "peers";
    r->peers_fd = map_create(BPF_MAP_TYPE_HASH, sizeof(uint64_t), sizeof(zlb_krelay_peer), sockets,
                             BPF_F_NO_PREALLOC);
    if (r->peers_fd >= 0) {
        what = "targets";
        r->targets_fd = map_create(BPF_MAP_TYPE_SOCKHASH, sizeof(uint64_t), sizeof(int), sockets, 0);
    }
    if (r->targets_fd >= 0) {
        what = "sources";
        r->sources_fd = map_create(BPF_MAP_TYPE_SOCKHASH, sizeof(uint64_t), sizeof(int), sockets, 0);
    }
    if (r->sources_fd < 0) {
        snprintf(err, errlen, "kernel relay: creating the %s map: %s", what, strerror(errno));
        goto fail;
    }
    r->prog_fd = load_program(r, err, errlen);
    if (r->prog_fd < 0)
        goto fail;
    union bpf_attr a;
    memset(&a, 0, sizeof(a));
    a.target_fd = (uint32_t)r->sources_fd;
    a.attach_bpf_fd = (uint32_t)r->prog_fd;
    a.attach_type = BPF_SK_SKB_VERDICT;
    if (sys_bpf(BPF_PROG_ATTACH, &a) != 0) {
        snprintf(err, errlen, "kernel relay: attaching the program: %s", strerror(errno));
        goto fail;
    }
    return r;
fail:
    zlb_krelay_free(r);
    return NULL;
}

void zlb_krelay_free(zlb_krelay *r)
{
    if (!r)
        return;
    int fds[] = {r->prog_fd, r->sources_fd, r->targets_fd, r->peers_fd};
    for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++)
        if (fds[i] >= 0)
            close(fds[i]);
    free(r);
}

/* Bytes the socket has taken for sending since it connected: acknowledged
 * plus still queued. Read in this order (acked, then queue), the sum can
 * only fall short of the truth while ACKs arrive, never exceed it. */
static int bytes_queued(int fd, uint64_t *out)
{
    struct tcp_info ti;
    socklen_t len = sizeof(ti);
    int outq = 0;
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) != 0 ||
        len < offsetof(struct tcp_info, tcpi_bytes_acked) + sizeof(ti.tcpi_bytes_acked) ||
        ioctl(fd, SIOCOUTQ, &outq) != 0)
        return -1;
    *out = ti.tcpi_bytes_acked + (uint64_t)outq;
    return 0;
}

/* The kernel processes bytes that arrived before a socket joined `sources`
 * only at the next arrival. Setting SO_RCVLOWAT makes TCP check for
 * readable data at once (tcp_set_rcvlowat calls the socket's data-ready
 * hook, now the relay's), so they go out now. 1 is the default value. */
static void process_queued(int fd)
{
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &one, sizeof(one));
}

int zlb_krelay_link(zlb_krelay *r, const int fd[2], zlb_krelay_pair *l)
{
    memset(l, 0, sizeof(*l));
    for (int i = 0; i < 2; i++) {
        socklen_t len = sizeof(l->cookie[i]);
        int outq = 0;
        if (getsockopt(fd[i], SOL_SOCKET, SO_COOKIE, &l->cookie[i], &len) != 0 || ioctl(fd[i], SIOCOUTQ, &outq) != 0)
            return -1;
        /* With nothing unacknowledged and no writer, the acked count is the
         * exact base (the drain check relies on it). */
        if (outq != 0) {
            errno = EAGAIN;
            return -1;
        }
        if (bytes_queued(fd[i], &l->queued_base[i]) != 0)
            return -1;
    }
    int stage = 0, e = 0;
    for (int i = 0; i < 2 && !e; i++) {
        zlb_krelay_peer p = {.cookie = l->cookie[1 - i]};
        if (map_update(r->peers_fd, &l->cookie[i], &p, BPF_NOEXIST) != 0)
            e = errno;
        else
            stage = i + 1;
    }
    /* Both are redirect targets before either runs the program. */
    for (int i = 0; i < 2 && !e; i++)
        if (map_update(r->targets_fd, &l->cookie[i], &fd[i], BPF_NOEXIST) != 0)
            e = errno;
    for (int i = 0; i < 2 && !e; i++)
        if (map_update(r->sources_fd, &l->cookie[i], &fd[i], BPF_NOEXIST) != 0)
            e = errno;
    if (e) {
        /* Only possible before the first socket ran the program (a full map,
         * kernel memory): nothing was relayed yet, so undoing is safe. */
        for (int i = 0; i < 2; i++) {
            map_delete(r->sources_fd, &l->cookie[i]);
            map_delete(r->targets_fd, &l->cookie[i]);
            if (i < stage)
                map_delete(r->peers_fd, &l->cookie[i]);
        }
        errno = e;
        return -1;
    }
    process_queued(fd[0]);
    process_queued(fd[1]);
    atomic_fetch_add(&live_links, 1);
    return 0;
}

void zlb_krelay_unlink(zlb_krelay *r, const zlb_krelay_pair *l)
{
    for (int i = 0; i < 2; i++) {
        map_delete(r->sources_fd, &l->cookie[i]);
        map_delete(r->targets_fd, &l->cookie[i]);
        map_delete(r->peers_fd, &l->cookie[i]);
    }
    atomic_fetch_sub(&live_links, 1);
}

int zlb_krelay_refresh(zlb_krelay *r, zlb_krelay_pair *l)
{
    int moved = 0;
    for (int i = 0; i < 2; i++) {
        zlb_krelay_peer p;
        if (map_lookup(r->peers_fd, &l->cookie[i], &p) == 0 && p.relayed != l->relayed[i]) {
            l->relayed[i] = p.relayed;
            moved = 1;
        }
    }
    return moved;
}

int zlb_krelay_drained(zlb_krelay *r, zlb_krelay_pair *l, int dir, const int fd[2])
{
    /* First: nothing left unread on the source. The kernel advances the
     * read position after the program ran and the skb was queued for the
     * peer, so from here on the counter is final. */
    int inq = 0;
    if (ioctl(fd[dir], SIOCINQ, &inq) != 0 || inq != 0)
        return 0;
    zlb_krelay_refresh(r, l);
    uint64_t queued;
    if (bytes_queued(fd[1 - dir], &queued) != 0)
        return 0;
    return queued - l->queued_base[1 - dir] >= l->relayed[dir];
}
