"""A small DHCPv4 server for the appliance tests: serves one link (SO_BINDTODEVICE) in a network
namespace the test made, with a short lease, and hands out whatever address the test says the
client is to have now. When the test changes that address, the next REQUEST for the old one
(a renewal) gets a NAK, and the client's new DISCOVER gets the new address: a lease that
changes address on renewal, the way a real server does it (a server never ACKs a renewal with
another address).

Leases can be per client: `move_to(addr, mac)` sets the address of the client with that MAC
(e.g. two appliances on one bridge, each with its own lease); a client without one of its own
gets the default address (`addr`, or `move_to(addr)`).

Every message is recorded (`log`): what was asked, whether it was a renewal (ciaddr set, no
requested-address option) and whether it came unicast to the server (a renewal) or broadcast
(selecting, rebinding), and what was answered.

Replies go to the limited broadcast address (the client has no address yet while selecting, and
smoltcp takes DHCP replies whatever their destination).
"""
import ipaddress
import socket
import struct
import threading
import time

IP_PKTINFO = 8  # <linux/in.h>; the socket module of Python 3.11 does not name it
MAGIC = b"\x63\x82\x53\x63"
DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = range(1, 9)
NAMES = {DISCOVER: "DISCOVER", OFFER: "OFFER", REQUEST: "REQUEST", DECLINE: "DECLINE", ACK: "ACK",
         NAK: "NAK", RELEASE: "RELEASE", INFORM: "INFORM"}


def _ip(b):
    return str(ipaddress.IPv4Address(b))


def parse(pkt):
    """A BOOTREQUEST as a dict (None when it is not a well-formed DHCP request)."""
    if len(pkt) < 240 or pkt[0] != 1 or pkt[236:240] != MAGIC:
        return None
    xid, = struct.unpack("!I", pkt[4:8])
    opts, i = {}, 240
    while i < len(pkt):
        code = pkt[i]
        if code == 255:
            break
        if code == 0:
            i += 1
            continue
        if i + 1 >= len(pkt) or i + 2 + pkt[i + 1] > len(pkt):
            return None
        opts[code] = pkt[i + 2:i + 2 + pkt[i + 1]]
        i += 2 + pkt[i + 1]
    if len(opts.get(53, b"")) != 1:
        return None
    return {"xid": xid, "ciaddr": _ip(pkt[12:16]), "chaddr": pkt[28:44],
            "type": opts[53][0], "requested": _ip(opts[50]) if len(opts.get(50, b"")) == 4 else None,
            "server_id": _ip(opts[54]) if len(opts.get(54, b"")) == 4 else None}


class DhcpServer:
    """Serves `ifname` from `server_ip` (already on the link) with `/prefix` leases of
    `lease` seconds (renewal at `t1`, rebinding at `t2`). `addr` is the address to hand out;
    set it with `move_to`; `leases` (MAC "52:54:00:..." -> address) gives clients their own."""

    def __init__(self, ifname, server_ip, prefix, addr=None, lease=16, t1=4, t2=12, leases=None):
        self.server_ip, self.prefix, self.lease, self.t1, self.t2 = server_ip, prefix, lease, t1, t2
        self.lock = threading.Lock()
        self.addr = addr
        self.leases = {m.lower(): a for m, a in (leases or {}).items()}
        self.log = []
        self.s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        self.s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
        self.s.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        self.s.bind(("0.0.0.0", 67))
        self.s.settimeout(0.5)
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, name="dhcp-server", daemon=True)
        self.thread.start()

    def move_to(self, addr, mac=None):
        """From now on the client (the one with `mac`; None: every client without a lease of
        its own) is to have `addr`: a request for any other address is refused."""
        with self.lock:
            if mac is None:
                self.addr = addr
            else:
                self.leases[mac.lower()] = addr

    def entries(self):
        with self.lock:
            return list(self.log)

    def stop(self):
        self.stopping = True
        self.thread.join(5)
        self.s.close()

    def _reply(self, req, kind, yiaddr):
        mask = int(ipaddress.IPv4Network(f"0.0.0.0/{self.prefix}").netmask)
        sid = ipaddress.IPv4Address(self.server_ip).packed
        opts = bytes([53, 1, kind, 54, 4]) + sid
        if kind != NAK:
            opts += bytes([51, 4]) + struct.pack("!I", self.lease)
            opts += bytes([58, 4]) + struct.pack("!I", self.t1)
            opts += bytes([59, 4]) + struct.pack("!I", self.t2)
            opts += bytes([1, 4]) + struct.pack("!I", mask)
            opts += bytes([3, 4]) + sid + bytes([6, 4]) + sid
        opts += b"\xff"
        # op, htype, hlen, hops, xid, secs, flags; ciaddr, yiaddr, siaddr, giaddr; chaddr;
        # sname and file (empty); the options.
        pkt = struct.pack("!BBBBIHH", 2, 1, 6, 0, req["xid"], 0, 0) \
            + b"\0" * 4 + ipaddress.IPv4Address(yiaddr).packed + sid + b"\0" * 4 \
            + req["chaddr"] + b"\0" * 192 + MAGIC + opts
        self.s.sendto(pkt, ("255.255.255.255", 68))

    def _serve(self):
        while not self.stopping:
            try:
                data, anc, _, src = self.s.recvmsg(2048, socket.CMSG_SPACE(12))
            except socket.timeout:
                continue
            except OSError:
                return
            dst = None
            for level, ctype, cdata in anc:
                if level == socket.IPPROTO_IP and ctype == IP_PKTINFO and len(cdata) >= 12:
                    dst = _ip(cdata[8:12])
            req = parse(data)
            if req is None:
                continue
            mac = ":".join(f"{b:02x}" for b in req["chaddr"][:6])
            with self.lock:
                addr = self.leases.get(mac, self.addr)
            e = {"t": time.time(), "type": NAMES.get(req["type"], str(req["type"])), "from": src[0], "mac": mac,
                 "unicast": dst == self.server_ip, "ciaddr": req["ciaddr"], "requested": req["requested"]}
            if addr is None:
                e["answer"] = "none (no lease for this client)"
            elif req["type"] == DISCOVER:
                self._reply(req, OFFER, addr)
                e["answer"] = f"OFFER {addr}"
            elif req["type"] == REQUEST:
                if req["server_id"] not in (None, self.server_ip):
                    e["answer"] = "none (another server was chosen)"
                else:
                    want = req["requested"] or req["ciaddr"]
                    e["renewal"] = req["requested"] is None and req["ciaddr"] != "0.0.0.0"
                    if want == addr:
                        self._reply(req, ACK, addr)
                        e["answer"] = f"ACK {addr}"
                    else:
                        self._reply(req, NAK, "0.0.0.0")
                        e["answer"] = "NAK"
            else:
                e["answer"] = "none"
            with self.lock:
                self.log.append(e)
