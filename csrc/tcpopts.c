/* tcpopts.c - see tcpopts.h. */
#include "tcpopts.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>

int zlb_tcp_set_congestion(int fd, const char *name)
{
    if (!name[0])
        return 0;
    return setsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, name, (socklen_t)strlen(name));
}
