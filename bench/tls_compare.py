"""TLS termination: zlbfast (1 worker) vs HAProxy 2.6 (`bind ... ssl crt ...`, nbthread 1), at two layers:

* tcp: zlbfast's TCP listener with `tls` vs HAProxy `mode tcp`;
* http: zlbfast's HTTP/1.1 listener with `tls` (requests parsed, routed and sent over pooled keep-alive upstream
  connections) vs HAProxy `mode http` (ALPN http/1.1, `http-reuse always`).

All terminate mutual TLS with the same certificates (an ECDSA P-256 SVID with a SPIFFE URI SAN, client
certificates required and verified against the same CA, TLS 1.3) and forward plaintext to the same nginx
backend (`return 200 "ok"`). One zlbfast process (one worker, both listeners) and one HAProxy process (one
thread, both frontends); only one target is loaded at a time. Two loads, from a closed-loop C client (embedded
below, built with gcc at start; one thread, epoll, non-blocking OpenSSL, the same client for every target):

* handshakes/s: a new TCP connection and a full handshake per request (no session resumption: the client keeps
  no session), `GET / HTTP/1.0`, response read to the end of the stream;
* keep-alive req/s: one handshake per connection, then HTTP/1.1 requests back to back on it.

Medians of --runs interleaved runs (the target order alternates from run to run) and zlbfast/haproxy ratios.
The proxy runs pinned on one CPU, client and backend on another (2-core machine); the proxy's and the client's
CPU use are reported so that a client-bound figure is visible: when the client uses ~100% of its CPU and the
proxy less than ~90% of its own, the figure is the client's limit, not the proxy's.

    python bench/tls_compare.py                    # 3 runs x 5 s per load and target, both layers
    python bench/tls_compare.py --layers http --runs 5 --duration 10 --json /tmp/tls.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from _procs import HOST, Child, ChildError, free_port, nginx_backend_argv, pinned, require_tool, start_listening

from zlbfast.bench import procstat

REPO = Path(__file__).resolve().parent.parent
TD = "bench.example"

CLIENT_C = r"""
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { HS, WR, RD };
struct conn { int fd; SSL *ssl; int st; size_t off, len; char buf[4096]; };
static SSL_CTX *ctx;
static int port, keepalive, ep;
static long long nreq, nhs, nerr;
static const char *req;
static size_t reqlen;

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }

static int open_conn(struct conn *c) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int one = 1;
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(c->fd, (struct sockaddr *)&a, sizeof a) != 0) { close(c->fd); return -1; }  /* loopback: immediate */
    fcntl(c->fd, F_SETFL, O_NONBLOCK);
    c->ssl = SSL_new(ctx);  /* a fresh SSL and no saved session: every handshake is a full one */
    SSL_set_fd(c->ssl, c->fd);
    SSL_set_connect_state(c->ssl);
    c->st = HS; c->off = c->len = 0;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.ptr = c};
    return epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
}

static void restart(struct conn *c) {
    SSL_free(c->ssl);
    close(c->fd);
    while (open_conn(c) != 0)
        if (++nerr > 1000) { fprintf(stderr, "too many connect errors: %s\n", strerror(errno)); exit(2); }
}

static int complete(const struct conn *c) { return c->len >= 6 && !memcmp(c->buf + c->len - 6, "\r\n\r\nok", 6); }

static void step(struct conn *c) {
    for (int guard = 0; guard < 10000; guard++) {
        int r;
        if (c->st == HS) {
            if ((r = SSL_do_handshake(c->ssl)) == 1) { nhs++; c->st = WR; c->off = 0; continue; }
        } else if (c->st == WR) {
            if ((r = SSL_write(c->ssl, req + c->off, (int)(reqlen - c->off))) > 0) {
                c->off += (size_t)r;
                if (c->off == reqlen) { c->st = RD; c->len = 0; }
                continue;
            }
        } else {
            if ((r = SSL_read(c->ssl, c->buf + c->len, (int)(sizeof c->buf - c->len))) > 0) {
                c->len += (size_t)r;
                if (keepalive && complete(c)) { nreq++; c->st = WR; c->off = 0; }
                else if (c->len == sizeof c->buf) { nerr++; restart(c); return; }
                continue;
            }
        }
        int e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return;
        if (c->st == RD && !keepalive && e == SSL_ERROR_ZERO_RETURN && complete(c)) nreq++;
        else nerr++;
        ERR_clear_error();
        restart(c);
        return;
    }
}

int main(int argc, char **argv) {
    if (argc != 8) { fprintf(stderr, "usage: hs|ka PORT CONNS SECONDS CERT KEY CA\n"); return 2; }
    keepalive = !strcmp(argv[1], "ka");
    port = atoi(argv[2]);
    int nconn = atoi(argv[3]);
    double secs = atof(argv[4]);
    req = keepalive ? "GET / HTTP/1.1\r\nHost: b\r\n\r\n" : "GET / HTTP/1.0\r\n\r\n";
    reqlen = strlen(req);
    ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
    if (SSL_CTX_use_certificate_chain_file(ctx, argv[5]) != 1
        || SSL_CTX_use_PrivateKey_file(ctx, argv[6], SSL_FILETYPE_PEM) != 1
        || SSL_CTX_load_verify_locations(ctx, argv[7], NULL) != 1) { ERR_print_errors_fp(stderr); return 2; }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);  /* chain against the CA; SPIFFE IDs are URIs: no host name */
    ep = epoll_create1(0);
    struct conn *cs = calloc((size_t)nconn, sizeof *cs);
    for (int i = 0; i < nconn; i++)
        if (open_conn(&cs[i]) != 0) { fprintf(stderr, "connect: %s\n", strerror(errno)); return 2; }
    double t0 = now(), end = t0 + secs;
    struct epoll_event evs[256];
    while (now() < end) {
        int n = epoll_wait(ep, evs, 256, 100);
        for (int i = 0; i < n; i++) step(evs[i].data.ptr);
    }
    double wall = now() - t0;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
    printf("{\"requests\": %lld, \"handshakes\": %lld, \"errors\": %lld, \"seconds\": %.4f, \"cpu_s\": %.4f}\n",
           nreq, nhs, nerr, wall, cpu);
    return 0;
}
"""


@dataclass
class Sample:
    rate: float = 0.0  # requests per second (handshakes/s in hs mode: one full handshake per request)
    errors: int = 0
    proxy_cpu: float = 0.0  # share of one CPU
    client_cpu: float = 0.0
    error: str | None = None


@dataclass
class Result:
    hs: list[Sample] = field(default_factory=list)
    ka: list[Sample] = field(default_factory=list)


def make_certs(d: Path) -> dict[str, str]:
    """A CA, a server SVID (also HAProxy's crt file: cert + key) and a client SVID, ECDSA P-256."""
    from tests.tlsutil import CA  # this checkout's tests (bench/_procs put the checkout on sys.path)

    ca = CA(TD)
    server, client = ca.issue("/bench/server"), ca.issue("/bench/client")
    files = {"ca": d / "ca.pem", "cert": d / "server.pem", "key": d / "server_key.pem", "haproxy": d / "haproxy.pem",
             "ccert": d / "client.pem", "ckey": d / "client_key.pem"}
    files["ca"].write_text(ca.pem)
    files["cert"].write_text(server.cert_pem)
    files["key"].write_text(server.key_pem)
    files["haproxy"].write_text(server.cert_pem + server.key_pem)
    files["ccert"].write_text(client.cert_pem)
    files["ckey"].write_text(client.key_pem)
    for k in ("key", "haproxy", "ckey"):
        os.chmod(files[k], 0o600)
    return {k: str(v) for k, v in files.items()}


def build_client(d: Path) -> str:
    src, exe = d / "tls_load.c", d / "tls_load"
    src.write_text(CLIENT_C)
    subprocess.run([require_tool("gcc", "gcc"), "-O2", "-o", str(exe), str(src), "-lssl", "-lcrypto"], check=True)
    return str(exe)


def measure(client: str, mode: str, port: int, proxy: Child, args: argparse.Namespace, certs: dict[str, str],
            cpu: str | None) -> Sample:
    conns = args.hs_conns if mode == "hs" else args.ka_conns
    argv = pinned([client, mode, str(port), str(conns), str(args.duration), certs["ccert"], certs["ckey"], certs["ca"]],
                  cpu)
    before = procstat.cpu_seconds(proxy.pid)
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=args.duration + 30, check=False)
    except subprocess.TimeoutExpired:
        return Sample(error="client did not finish")
    used = procstat.cpu_seconds(proxy.pid) - before
    if out.returncode != 0:
        return Sample(error=f"client failed ({out.returncode}): {out.stderr.strip()[-300:]}")
    r = json.loads(out.stdout)
    return Sample(rate=r["requests"] / r["seconds"], errors=r["errors"], proxy_cpu=used / r["seconds"],
                  client_cpu=r["cpu_s"] / r["seconds"])


# Targets by layer: (zlbfast, haproxy), compared with each other.
PAIRS = {"tcp": ("zlbfast", "haproxy"), "http": ("zlbfast-http", "haproxy-http")}


def start_targets(d: Path, certs: dict[str, str], backend_port: int, zlbfast_cmd: list[str],
                  cpu: str | None, children: list[Child]) -> dict[str, tuple[Child, int]]:
    """Starts both proxies, each with a TCP and an HTTP TLS listener; each child joins `children` as soon as it
    runs, so a failure to start the second one still stops the first."""
    ports = {name: free_port() for pair in PAIRS.values() for name in pair}
    tls = {"cert": certs["cert"], "key": certs["key"], "bundle": certs["ca"], "mode": "strict",
           "peer": {"trust_domain": TD}}
    cfg = d / "zlbfast.yaml"
    cfg.write_text(json.dumps({
        "workers": 1,
        "listeners": [
            {"name": "tls", "address": f"{HOST}:{ports['zlbfast']}", "cluster": "backend", "tls": tls},
            {"name": "https", "address": f"{HOST}:{ports['zlbfast-http']}", "protocol": "http", "tls": tls,
             "virtual_hosts": [{"name": "all", "routes": [{"match": {"prefix": "/"}, "cluster": "backend"}]}]},
        ],
        "clusters": [{"name": "backend", "endpoints": [f"{HOST}:{backend_port}"]}],
    }))
    zlb = start_listening("zlbfast", pinned([*zlbfast_cmd, "run", "-c", str(cfg), "--admin", "off"], cpu),
                          ports["zlbfast"], d / "zlbfast.log", cwd=REPO)
    children.append(zlb)
    hcfg = d / "haproxy.cfg"
    ssl = f"ssl crt {certs['haproxy']} ca-file {certs['ca']} verify required ssl-min-ver TLSv1.3"
    hcfg.write_text(f"""global
    nbthread 1
    maxconn 4096
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend tls
    bind {HOST}:{ports['haproxy']} {ssl}
    default_backend b
backend b
    server s1 {HOST}:{backend_port}
frontend https
    mode http
    bind {HOST}:{ports['haproxy-http']} {ssl} alpn http/1.1
    default_backend bh
backend bh
    mode http
    http-reuse always
    server s1 {HOST}:{backend_port}
""")
    hap = start_listening("haproxy", pinned([require_tool("haproxy", "haproxy"), "-db", "-f", str(hcfg)], cpu),
                          ports["haproxy"], d / "haproxy.log")
    children.append(hap)
    return {name: (zlb if name.startswith("zlbfast") else hap, port) for name, port in ports.items()}


def nginx(d: Path, port: int, cpu: str | None) -> Child:
    root = d / "nginx"
    root.mkdir()
    require_tool("nginx", "nginx")
    argv = nginx_backend_argv(root, f'    server {{ listen {HOST}:{port}; location / {{ return 200 "ok"; }} }}')
    return start_listening("nginx", pinned(argv, cpu), port, d / "nginx.log")


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per load, target and run")
    ap.add_argument("--hs-conns", type=int, default=16, help="concurrent connections, handshake load")
    ap.add_argument("--ka-conns", type=int, default=64, help="concurrent connections, keep-alive load")
    ap.add_argument("--zlbfast-cmd", default=f"{sys.executable} -m zlbfast")
    ap.add_argument("--no-pin", action="store_true", help="do not pin proxy (CPU 0) and client+backend (CPU 1)")
    ap.add_argument("--layers", default="tcp,http", help="comma-separated: tcp (L4 listeners), http (HTTP listeners)")
    ap.add_argument("--json", help="write every sample here")
    args = ap.parse_args()
    proxy_cpu, load_cpu = (None, None) if args.no_pin or (os.cpu_count() or 1) < 2 else ("0", "1")
    children: list[Child] = []
    layers = [x for x in args.layers.split(",") if x]
    if not layers or any(x not in PAIRS for x in layers):
        ap.error(f"--layers: expected a comma-separated subset of {', '.join(PAIRS)}")
    results = {name: Result() for layer in layers for name in PAIRS[layer]}
    with tempfile.TemporaryDirectory(prefix="zlb-tls-bench.") as tmp:
        d = Path(tmp)
        try:
            certs = make_certs(d)
            client = build_client(d)
            backend_port = free_port()
            children.append(nginx(d, backend_port, load_cpu))
            targets = start_targets(d, certs, backend_port, shlex.split(args.zlbfast_cmd), proxy_cpu, children)
            for run in range(args.runs):
                for mode in ("hs", "ka"):
                    for name in [n for layer in layers for n in PAIRS[layer][:: 1 if run % 2 == 0 else -1]]:
                        child, port = targets[name]
                        s = measure(client, mode, port, child, args, certs, load_cpu)
                        getattr(results[name], mode).append(s)
                        print(f"run {run + 1}/{args.runs} {mode} {name}: "
                              + (s.error or f"{s.rate:,.0f}/s errors={s.errors} proxy_cpu={s.proxy_cpu:.0%} "
                                           f"client_cpu={s.client_cpu:.0%}"), file=sys.stderr)
        except ChildError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            for child in reversed(children):
                child.stop()
    print(f"\nTLS termination ({', '.join(layers)}), {dt.date.today()}, {os.cpu_count()} CPUs, medians of "
          f"{args.runs} runs x {args.duration:g} s; handshake load {args.hs_conns} conns, keep-alive load "
          f"{args.ka_conns} conns\n")
    # "per proxy CPU-s": requests per second of CPU the proxy used, steadier than the rate on shared cores.
    print("| target | load | rate /s | per proxy CPU-s | proxy CPU | client CPU | errors |")
    print("|---|---|---|---|---|---|---|")
    for mode, label in (("hs", "handshakes (new conn per request)"), ("ka", "keep-alive requests")):
        for name, res in results.items():
            ok = [s for s in getattr(res, mode) if s.error is None]
            errs = sum(s.errors for s in ok) + sum(1 for s in getattr(res, mode) if s.error)
            print(f"| {name} | {label} | {med([s.rate for s in ok]):,.0f} | "
                  f"{med([s.rate / s.proxy_cpu for s in ok if s.proxy_cpu]):,.0f} | "
                  f"{med([s.proxy_cpu for s in ok]):.0%} | {med([s.client_cpu for s in ok]):.0%} | {errs} |")
    print()
    for layer in layers:
        z, h = (results[name] for name in PAIRS[layer])
        for mode, label in (("hs", "handshakes/s"), ("ka", "keep-alive req/s")):
            zs = [s for s in getattr(z, mode) if s.error is None]
            hs = [s for s in getattr(h, mode) if s.error is None]
            zr, hr = med([s.rate for s in zs]), med([s.rate for s in hs])
            ze = med([s.rate / s.proxy_cpu for s in zs if s.proxy_cpu])
            he = med([s.rate / s.proxy_cpu for s in hs if s.proxy_cpu])
            print(f"{layer}: zlbfast/haproxy {label}: {zr / hr:.2f} (per proxy CPU-second: {ze / he:.2f})"
                  if hr and he else f"{layer}: zlbfast/haproxy {label}: n/a")
    if args.json:
        Path(args.json).write_text(json.dumps({n: {"hs": [vars(s) for s in r.hs], "ka": [vars(s) for s in r.ka]}
                                               for n, r in results.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
