/*
 * tcpopts.h - per-socket TCP settings that listeners and clusters may ask
 * for, applied the same way on every path that opens a socket (listening
 * sockets, L4 and HTTP upstream connects).
 */
#ifndef ZLB_TCPOPTS_H
#define ZLB_TCPOPTS_H

/* Room for a congestion control name with its NUL (the kernel's
 * TCP_CA_NAME_MAX). */
#define ZLB_TCP_CA_NAME_MAX 16

/* Sets fd's congestion control algorithm (TCP_CONGESTION) to `name`; "" keeps
 * the system default (net.ipv4.tcp_congestion_control) and makes no call.
 * Returns 0, or -1 with errno (ENOENT: not in this kernel; EPERM: not in
 * net.ipv4.tcp_allowed_congestion_control and no CAP_NET_ADMIN). Any thread;
 * set on a listening socket, it is inherited by the sockets accept() returns. */
int zlb_tcp_set_congestion(int fd, const char *name);

#endif
