/* LD_PRELOAD shim of the event relay: bind() on another port.
 *
 * BEAMLINE_PORTMAP="24000:24001,24002:24003" makes a bind() to port 24000
 * bind port 24001 instead (any address, IPv4 or IPv6); every other bind() is
 * untouched. A device server advertises, for its ZMQ event and heartbeat
 * publishers, the ports it binds (TANGO_ZMQ_EVENT_PORT and
 * TANGO_ZMQ_HEARTBEAT_PORT, cppTango's zmqeventsupplier.cpp); with this shim
 * it advertises the ports of the host's event relay (which its clients
 * connect to, and which outlive it) and binds its own (which the relay
 * connects to). See docs/events.md.
 *
 * Built by setup.py (an optional extension: without a C compiler the suite
 * runs without the relay); loaded with LD_PRELOAD by the fork server, or by a
 * server that starts on its own (tango_devices/relay/ports.py).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

/* its presence in a process says the shim is loaded (tango_devices/relay/ports.py) */
int beamline_portmap_loaded = 1;

static int (*real_bind)(int, const struct sockaddr *, socklen_t);

static int mapped(int port)
{
    const char *m = getenv("BEAMLINE_PORTMAP");
    while (m && *m) {
        char *end;
        long from = strtol(m, &end, 10);
        if (*end != ':')
            return port;
        long to = strtol(end + 1, &end, 10);
        if (from == port && to > 0 && to < 65536)
            return (int)to;
        if (*end != ',')
            break;
        m = end + 1;
    }
    return port;
}

int bind(int fd, const struct sockaddr *addr, socklen_t len)
{
    if (!real_bind)
        real_bind = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "bind");
    if (addr && addr->sa_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
        struct sockaddr_in a;
        memcpy(&a, addr, sizeof a);
        int p = ntohs(a.sin_port), q = mapped(p);
        if (q != p) {
            a.sin_port = htons((unsigned short)q);
            return real_bind(fd, (struct sockaddr *)&a, sizeof a);
        }
    } else if (addr && addr->sa_family == AF_INET6 && len >= sizeof(struct sockaddr_in6)) {
        struct sockaddr_in6 a;
        memcpy(&a, addr, sizeof a);
        int p = ntohs(a.sin6_port), q = mapped(p);
        if (q != p) {
            a.sin6_port = htons((unsigned short)q);
            return real_bind(fd, (struct sockaddr *)&a, sizeof a);
        }
    }
    return real_bind(fd, addr, len);
}
