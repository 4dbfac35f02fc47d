#!/usr/bin/env python3
"""Boots the Cairn ISO under QEMU (TCG) and drives it over the serial line like a person would.

Scenarios (argv[1]):
  bios-cd   SeaBIOS, ISO as CD: wizard with bad input first, create cluster, API login through
            the port forward, both NVMe disks in the pool, the foreign disk untouched, a virtual
            disk created and filled with random bytes over NBD; reboot from the menu; comes back
            configured without the wizard, with the same cluster id and member id, cluster CA
            (fingerprint in a join token), API certificate, admin password (the wrong one still
            refused), and the same virtual disks with the same bytes (read back over NBD).
  join      two appliances from the ISO, joined over a private link between them (a second
            NIC, QEMU socket netdev over UDP on 127.0.0.1): appliance 1 creates the cluster on
            its private-link address, appliance 2's wizard joins with a token from 1's API; both
            list the same two members, a vdisk made on either is in the other's cluster state;
            appliance 2 reboots and comes back a member without the wizard.
  uefi-usb  OVMF, ISO as a USB stick on xHCI: wizard, API login, pool of two; the stick's bytes
            are unchanged afterwards (the boot medium is never written).
  pid1-fail direct kernel boot with cairn.fail_node=1 on disks configured by bios-cd: PID 1
            logs the failure and reboots cleanly (no kernel panic), twice in a row.
  live      direct kernel boot on the disks configured by bios-cd, with an i6300esb watchdog:
            network changes from the console menu applied without a reboot (static address:
            the API moves to it; VLAN 42: tagged frames on the wire; back to DHCP); the node is
            not reset while PID 1 kicks its 15 s watchdog (60 s), and is reset when a test hook
            stops the kicks.
  dhcp-renew direct kernel boot on blank disks, wizard (DHCP, create cluster), eth0 a tap link in
            a network namespace the test makes, served by the test's DHCP server (dhcpserver.py) with
            short leases: a renewal refused and another address offered moves the node (API
            on the new address only, cluster member there, the change in the log ring).
  rejoin-dhcp two appliances on a bridge in the test's own namespace, a DHCP lease each (by MAC):
            1 creates a cluster, 2's wizard joins it; 2 is shut down, its lease moves, it is
            powered on again on the new address: the cluster follows (member address committed,
            both up in GET /cluster and cluster status on either, vdisks made on either reach the other).
Certificates: the node's certificate is self-signed, so the tests check it as a careful admin
would: they read its SHA-256 and its key's SHA-256 off the console's status screen, every HTTPS
connection must be served that key (it stays when the node re-issues the certificate for a new
address) and the certificate the console shows (after a re-issue, once the screen is refreshed);
dhcp-renew and rejoin-dhcp also check, with the served certificate as the only trust anchor, that
it names the new address. Only `bench` connects unpinned.
Prints `ok: ...` lines; exits non-zero with `FAIL: ...` on the first failed check.
Only 127.0.0.1 is used on the host side (and 10.99.0.0/24 and 10.99.1.0/24 inside dhcp-renew's and
rejoin-dhcp's own namespaces).
"""
import functools, hashlib, http.client, http.cookiejar, json, os, re, shutil, socket, ssl, subprocess, sys, time
import urllib.request

OUT = os.environ["APPLIANCE_WORK"]
ISO = os.environ["CAIRN_ISO"]
KERNEL = os.environ.get("CAIRN_KERNEL", "")
INITRD = os.environ.get("CAIRN_INITRD", "")
PASSWORD = "correct-horse-42"
DISK_BYTES = 512 << 20
# Where the appliance's NBD export of the data check listens (reached through a port forward).
NBD_GUEST_PORT = 10809
DATA_VDISK_BYTES = 16 << 20


def fail(msg):
    print(f"FAIL: {msg}", flush=True)
    sys.exit(1)


def ok(msg):
    print(f"ok: {msg}", flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def make_disk(path, foreign=False):
    with open(path, "wb") as f:
        f.truncate(DISK_BYTES)
        if foreign:
            f.seek(0)
            f.write(b"\xeb\x3c\x90" + b"foreign data, do not touch" + b"\0" * 480 + b"\x55\xaa")


def sha(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


class Vm:
    def __init__(self, name, args, port, hostfwd_extra="", net=None):
        """net: QEMU arguments for the first NIC instead of user networking with a port
        forward to 8443 on `port`."""
        self.name, self.port = name, port
        self.sock_path = os.path.join(OUT, f"{name}.serial")
        self.log_path = os.path.join(OUT, f"{name}.log")
        self.mon_path = os.path.join(OUT, f"{name}.mon")
        for p in (self.sock_path, self.mon_path):
            if os.path.exists(p):
                os.unlink(p)
        if net is None:
            net = ["-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:8443{hostfwd_extra}",
                   "-device", "virtio-net-pci,netdev=n0"]
        cmd = ["qemu-system-x86_64", "-machine", "q35", "-accel", "tcg", "-m", "1536", "-smp", "2",
               "-display", "none", "-vga", "std",
               "-monitor", f"unix:{self.mon_path},server=on,wait=off",
               "-chardev", f"socket,id=ser0,path={self.sock_path},server=on,wait=on",
               "-serial", "chardev:ser0"] + net + args
        self.qemu = subprocess.Popen(cmd, stdout=open(self.log_path + ".qemu", "w"), stderr=subprocess.STDOUT)
        deadline = time.time() + 20
        while not os.path.exists(self.sock_path):
            if time.time() > deadline or self.qemu.poll() is not None:
                fail(f"{name}: QEMU did not start (see {self.log_path}.qemu)")
            time.sleep(0.1)
        self.s = socket.socket(socket.AF_UNIX)
        self.s.connect(self.sock_path)
        self.s.settimeout(0.5)
        self.buf = ""
        self.pos = 0
        self.log = open(self.log_path, "a")
        self.started = time.time()

    def _read(self):
        try:
            d = self.s.recv(65536)
        except socket.timeout:
            return
        if not d:
            time.sleep(0.2)
            return
        t = d.decode("utf-8", "replace").replace("\r", "")
        self.buf += t
        self.log.write(t)
        self.log.flush()

    def expect(self, pattern, timeout=120, what=None):
        rx = re.compile(pattern)
        deadline = time.time() + timeout
        while True:
            m = rx.search(self.buf, self.pos)
            if m:
                self.pos = m.end()
                return m
            if "Kernel panic" in self.buf[self.pos:]:
                fail(f"{self.name}: kernel panic while waiting for {what or pattern!r} (see {self.log_path})")
            if time.time() > deadline:
                fail(f"{self.name}: timed out waiting for {what or pattern!r} (see {self.log_path})")
            if self.qemu.poll() is not None:
                fail(f"{self.name}: QEMU exited while waiting for {what or pattern!r}")
            self._read()

    def send(self, line):
        time.sleep(0.2)
        self.s.sendall(line.encode() + b"\r")

    def answer(self, prompt, line, timeout=60):
        self.expect(re.escape(prompt), timeout)
        self.send(line)

    def hmp(self, command, timeout=30):
        """One QEMU human-monitor command; returns its output."""
        m = socket.socket(socket.AF_UNIX)
        m.connect(self.mon_path)
        m.settimeout(timeout)
        got = b""
        try:
            while not got.endswith(b"(qemu) "):
                got += m.recv(65536)
            m.sendall(command.encode() + b"\n")
            got = b""
            while not got.endswith(b"(qemu) "):
                d = m.recv(1 << 20)
                if not d:
                    break
                got += d
        finally:
            m.close()
        return got.decode("latin-1")

    def vga_text(self):
        """The characters in the VGA text buffer (all 32 KiB vgacon scrolls through)."""
        out = self.hmp("xp /16384hx 0xb8000")
        chars = []
        for line in out.splitlines():
            mm = re.match(r"^\s*[0-9a-f]+:((?:\s+0x[0-9a-f]{4})+)", line.strip())
            if mm:
                for w in mm.group(1).split():
                    c = int(w, 16) & 0xFF
                    chars.append(chr(c) if 32 <= c < 127 else " ")
        return "".join(chars)

    def stop(self):
        try:
            self.qemu.kill()
            self.qemu.wait(10)
        except Exception:
            pass


def der_element(b, i):
    """The DER element at b[i]: (tag, where its contents start, where it ends)."""
    if i + 2 > len(b):
        raise ValueError("DER cut short")
    tag, n, i = b[i], b[i + 1], i + 2
    if n & 0x80:
        k = n & 0x7F
        n, i = int.from_bytes(b[i:i + k], "big"), i + k
    if i + n > len(b):
        raise ValueError("DER element longer than its certificate")
    return tag, i, i + n


def key_sha256(der):
    """SHA-256 of a DER certificate's SubjectPublicKeyInfo: what the node shows as the key's
    SHA-256 (console, GET /certificate key_sha256, the web UI's Settings)."""
    _, cert, _ = der_element(der, 0)
    _, i, _ = der_element(der, cert)  # tbsCertificate's contents
    if der[i] == 0xA0:  # [0] version
        i = der_element(der, i)[2]
    for _ in range(5):  # serialNumber, signature, issuer, validity, subject
        i = der_element(der, i)[2]
    tag, _, end = der_element(der, i)
    if tag != 0x30:
        raise ValueError("no SubjectPublicKeyInfo where the certificate should have it")
    return hashlib.sha256(der[i:end]).hexdigest()


class Pin:
    """The UI certificate as a careful admin checks it: read off the node's console (status
    screen), then every HTTPS connection must be served a certificate with that key (the key
    stays when the node re-issues its certificate for a new address), and the certificate
    served must be the one the console shows (see `confirm`). A mismatch fails the test."""

    def __init__(self, vm, cert, key):
        self.vm, self.cert, self.key = vm, cert, key
        self.served = None  # the last certificate served (DER)

    def check(self, der, where):
        if not der:
            fail(f"{self.vm.name}: no certificate served at {where}")
        try:
            got = key_sha256(der)
        except ValueError as e:
            fail(f"{self.vm.name}: the certificate served at {where} cannot be read: {e}")
        if got != self.key:
            fail(f"{self.vm.name}: the certificate served at {where} has key SHA-256 {got}, "
                 f"the console shows {self.key}")
        self.served = der

    def confirm(self):
        """The certificate served last is the one the console shows: at once, or (after the node
        re-issued it for a new address, with the same key) once the status screen is refreshed."""
        if self.served is None:
            fail(f"{self.vm.name}: no HTTPS connection yet to compare with the console")
        got = hashlib.sha256(self.served).hexdigest()
        if got == self.cert:
            return "as first shown"
        cert, key = console_certificate(self.vm)
        if (cert, key) != (got, self.key):
            fail(f"{self.vm.name}: served certificate SHA-256 {got}; after a refresh the console "
                 f"shows {cert} (key {key}, pinned {self.key})")
        self.cert = cert
        return "after a refresh (re-issued for a new address, same key)"


def console_certificate(vm, timeout=120):
    """Refreshes the console's status screen (enter at the menu) until it shows the UI
    certificate; returns (certificate SHA-256, key SHA-256) as shown. Leaves vm.pos where it
    was, so what the scenario waits for next is found even if printed before."""
    keep = vm.pos
    deadline = time.time() + timeout
    try:
        while True:
            vm._read()
            vm.pos = len(vm.buf)
            vm.send("")
            vm.expect(r"\nUI certificate", 60, "the status screen's UI certificate")
            m = vm.expect(r"(: not made yet.*|: unreadable: .*| \(.*\):)\n", 10)
            if m.group(1).startswith(":"):
                # (not made yet, or caught while the node service writes it at start)
                if time.time() > deadline:
                    fail(f"{vm.name}: the console shows no UI certificate within {timeout} s: "
                         f"UI certificate{m.group(1)}")
                time.sleep(3)
                continue
            # (one line each; a log line of another thread may come between them)
            cert = vm.expect(r"(?m)^  SHA-256     ([0-9a-f]{64})$", 10, "the certificate's SHA-256").group(1)
            key = vm.expect(r"(?m)^  Key SHA-256 ([0-9a-f]{64})$", 10, "the key's SHA-256").group(1)
            return cert, key
    finally:
        vm.pos = keep


def console_pin(vm):
    """The pin a person takes off the console before the first browser visit."""
    cert, key = console_certificate(vm)
    ok(f"{vm.name}: the console shows the UI certificate, SHA-256 {cert[:16]}..., key {key[:16]}...")
    return Pin(vm, cert, key)


class PinnedConnection(http.client.HTTPSConnection):
    """An HTTPS connection that hands the certificate it was served to a Pin before any request."""

    def __init__(self, pin, host, **kw):
        super().__init__(host, **kw)
        self.pin = pin

    def connect(self):
        super().connect()
        self.pin.check(self.sock.getpeercert(binary_form=True), f"{self.host}:{self.port}")


class PinnedHandler(urllib.request.HTTPSHandler):
    def __init__(self, pin, context):
        super().__init__(context=context)
        self.pin, self.ctx = pin, context

    def https_open(self, req):
        return self.do_open(functools.partial(PinnedConnection, self.pin), req, context=self.ctx)


def unverified_context():
    """TLS without the system's trust roots: the certificate is self-signed; a Pin checks it."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Api:
    def __init__(self, port, host="127.0.0.1", pin=None):
        """pin: the console's UI certificate (a Pin), checked on every connection; None only
        for the boot benchmark, which measures time to the first answer."""
        ctx = unverified_context()
        https = PinnedHandler(pin, ctx) if pin else urllib.request.HTTPSHandler(context=ctx)
        self.jar = http.cookiejar.CookieJar()
        self.op = urllib.request.build_opener(https, urllib.request.HTTPCookieProcessor(self.jar))
        self.base = f"https://{host}:{port}/api/v1"
        self.csrf = ""

    def call(self, method, path, body=None, timeout=30):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if self.csrf:
            req.add_header("X-CSRF-Token", self.csrf)
        try:
            with self.op.open(req, timeout=timeout) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def wait_health(self, timeout=120, where="through the port forward"):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                st, _ = self.call("GET", "/health")
                if st == 200:
                    return
            except Exception:
                pass
            time.sleep(1)
        fail(f"the HTTPS API did not answer {where}")

    def login(self, password):
        st, b = self.call("POST", "/auth/login", {"user": "admin", "password": password})
        if st == 200:
            self.csrf = b.get("csrf_token", "")
        return st


def value(b):
    """A reply's payload (some replies wrap it in {"value": ...})."""
    return b["value"] if isinstance(b, dict) and "value" in b else b


def served_certificate(host, port, pin):
    """The certificate (DER) the HTTPS API serves at host:port, checked against the pin."""
    with socket.create_connection((host, port), timeout=30) as raw:
        with unverified_context().wrap_socket(raw) as t:
            der = t.getpeercert(binary_form=True)
    pin.check(der, f"{host}:{port}")
    return der


def tls_fingerprint(port, pin):
    """SHA-256 of the certificate the HTTPS API presents."""
    return hashlib.sha256(served_certificate("127.0.0.1", port, pin)).hexdigest()


def check_names_address(vm, addr, pin, port=8443):
    """The certificate served on https://addr:port/ names addr: a client that takes that
    certificate as its trust anchor and checks the name (as `cairn --ca-cert` and a browser
    with a stored exception do) accepts it. Returns the names it carries."""
    der = served_certificate(addr, port, pin)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # checks the chain and the name
    ctx.load_verify_locations(cadata=der)
    try:
        with socket.create_connection((addr, port), timeout=30) as raw:
            with ctx.wrap_socket(raw, server_hostname=addr) as t:
                again = t.getpeercert(binary_form=True)
                names = [v for _, v in t.getpeercert().get("subjectAltName", ())]
    except ssl.SSLCertVerificationError as e:
        fail(f"{vm.name}: the certificate served on {addr} does not pass a name check for {addr}: "
             f"{e.verify_message}")
    pin.check(again, f"{addr}:{port}")
    return names


def check_api_certificate(api, vm, pin):
    """GET /certificate (logged in) names the certificate and key the console shows."""
    st, b = api.call("GET", "/certificate")
    if st != 200:
        fail(f"{vm.name}: GET /certificate -> {st} {b}")
    c = value(b)
    if (c.get("sha256_fingerprint"), c.get("key_sha256")) != (pin.cert, pin.key):
        fail(f"{vm.name}: GET /certificate shows {c.get('sha256_fingerprint')} key {c.get('key_sha256')}, "
             f"the console {pin.cert} key {pin.key}")


def identity(api, vm, port, pin):
    """What must survive a reboot: cluster id, member id, the members (id, cluster address,
    role), cluster CA fingerprint (the middle of a join token), the API's certificate."""
    st, b = api.call("GET", "/cluster")
    if st != 200:
        fail(f"{vm.name}: GET /cluster -> {st} {b}")
    c = value(b)
    st, t = api.call("POST", "/cluster/tokens")
    if st != 201:
        fail(f"{vm.name}: POST /cluster/tokens -> {st} {t}")
    token = value(t)["token"]
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != "cairn1" or not re.fullmatch(r"[0-9a-f]{64}", parts[1]):
        fail(f"{vm.name}: join token {token[:20]}... is not cairn1.<CA fingerprint>.<secret>")
    return {"cluster_id": c["cluster_id"], "member_id": c["me"],
            "members": sorted((m["id"], m["address"], m["role"]) for m in c["members"]),
            "ca_fingerprint": parts[1], "api_certificate": tls_fingerprint(port, pin)}


def nbd_start(api, vm, vdisk):
    st, b = api.call("POST", "/nbd", {"vdisk": vdisk, "listen": f"0.0.0.0:{NBD_GUEST_PORT}"})
    if st != 201:
        fail(f"{vm.name}: NBD export of {vdisk} -> {st} {b}")
    return value(b)


def nbd_stop(api, vm, export):
    st, b = api.call("DELETE", f"/nbd/{export['id']}")
    if st != 204:
        fail(f"{vm.name}: stop NBD export {export['id']} -> {st} {b}")


def nbdcopy(vm, src, dst):
    r = subprocess.run(["nbdcopy", "--flush", src, dst], capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        fail(f"{vm.name}: nbdcopy {src} {dst}: {r.stderr.strip()}")


def wizard(vm, bad_input, cluster_link=None, join=None):
    """cluster_link: (link, "ADDRESS/PREFIX") for a machine with a second NIC (None: there is
    only one and the question is not asked); join: (address, token) to join instead of create."""
    vm.expect(r"=== Cairn setup ===", 180, "the setup wizard")
    vm.expect(r"Disks:")
    m = vm.expect(r"Network link \[(\w+)\]: ", 30)
    if bad_input:
        vm.send("eth9")
        vm.expect(r'error: no network link named "eth9"')
        vm.answer("Network link", "")
    else:
        vm.send("")
    vm.answer("VLAN id (empty for none): ", "")
    if bad_input:
        vm.expect(re.escape("Address: dhcp, or ADDRESS/PREFIX [GATEWAY [DNS ...]] [dhcp]: "))
        vm.send("10.0.2.300/24")
        vm.expect(r'error: address "10.0.2.300" is not an IPv4 address')
        ok(f"{vm.name}: invalid address refused with a clear message")
    vm.answer("[dhcp]: ", "dhcp")
    if cluster_link:
        vm.answer("Cluster network link (empty: the management network): ", cluster_link[0])
        vm.answer(f"Cluster address on {cluster_link[0]} (ADDRESS/PREFIX): ", cluster_link[1])
    if bad_input:
        vm.answer("Hostname [cairn]: ", "-bad-")
        vm.expect(r"error: hostname")
    vm.answer("Hostname [cairn]: ", f"{vm.name}-node")
    if join:
        vm.answer("(create/join) [create]: ", "join")
        vm.answer("Cluster address of a member (IP:PORT): ", join[0])
        vm.answer("Join token: ", join[1])
    else:
        vm.answer("(create/join) [create]: ", "create")
    if bad_input:
        vm.answer("Admin password: ", PASSWORD)
        vm.answer("Admin password again: ", PASSWORD + "x")
        vm.expect(r"error: the passwords do not match")
        ok(f"{vm.name}: mismatched passwords refused")
    vm.answer("Admin password: ", PASSWORD)
    vm.answer("Admin password again: ", PASSWORD)
    vm.expect(r"Summary:")
    if bad_input:
        vm.expect(r"disk nvme2n1: left untouched", 10, "the foreign disk marked untouched")
        vm.answer("(yes/no): ", "no")
        vm.expect(r"Nothing was changed. Starting over.")
        ok(f"{vm.name}: declining the summary changes nothing and starts over")
        return wizard(vm, False)
    if cluster_link:
        vm.expect(re.escape(f"cluster network: {cluster_link[0]} static {cluster_link[1]}"), 10)
    vm.answer("(yes/no): ", "yes")


def check_pool(api, vm, want_disks):
    deadline = time.time() + 60
    while True:
        st, disks = api.call("GET", "/disks")
        if st != 200:
            fail(f"{vm.name}: GET /disks -> {st} {disks}")
        items = disks if isinstance(disks, list) else disks.get("disks", disks.get("items", []))
        if len(items) >= want_disks or time.time() > deadline:
            break
        time.sleep(2)
    if len(items) != want_disks:
        fail(f"{vm.name}: pool has {len(items)} disks, want {want_disks}: {items}")
    names = " ".join(json.dumps(d) for d in items)
    if "nvme2n1" in names:
        fail(f"{vm.name}: the foreign disk joined the pool")
    ok(f"{vm.name}: both NVMe disks joined the pool ({want_disks} disks)")


def nvme(path, serial):
    return ["-drive", f"file={path},if=none,id={serial},format=raw,cache=unsafe",
            "-device", f"nvme,serial={serial},drive={serial}"]


def bios_cd():
    d = [os.path.join(OUT, f"cd-nvme{i}.raw") for i in range(3)]
    make_disk(d[0]); make_disk(d[1]); make_disk(d[2], foreign=True)
    foreign_before = sha(d[2])
    port, nbd_port = free_port(), free_port()
    args = ["-cdrom", ISO, "-boot", "d"] + nvme(d[0], "n0") + nvme(d[1], "n1") + nvme(d[2], "n2")
    vm = Vm("bios-cd", args, port, f",hostfwd=tcp:127.0.0.1:{nbd_port}-:{NBD_GUEST_PORT}")
    nbd_uri = f"nbd://127.0.0.1:{nbd_port}/data1"
    pattern = os.path.join(OUT, "data1.pattern")
    with open(pattern, "wb") as f:
        f.write(os.urandom(DATA_VDISK_BYTES))
    readback = os.path.join(OUT, "data1.readback")
    try:
        vm.expect(r"Cairn \S+ starting as PID 1", 180, "PID 1 banner")
        ok(f"bios-cd: kernel + PID 1 up in {time.time() - vm.started:.1f} s")
        vm.expect(r"Network link \[", 180, "the first wizard question")
        # The screen's text console draws after the serial line (slower under emulation, more
        # so with another QEMU on the machine): give it a few seconds to catch up.
        wants = ("=== Cairn setup ===", "Disks:", "Network link [")
        screen, until = vm.vga_text(), time.time() + 20
        while not all(w in screen for w in wants) and time.time() < until:
            time.sleep(0.5)
            screen = vm.vga_text()
        for want in wants:
            if want not in screen:
                fail(f"bios-cd: the VGA screen does not show {want!r}: {screen[-400:]!r}")
        ok("bios-cd: the screen (VGA text console) shows the wizard too")
        vm.pos = 0
        wizard(vm, True)
        vm.expect(r"network: eth0 10\.0\.2\.\d+/24", 60, "DHCP lease from slirp")
        ok("bios-cd: DHCP lease applied")
        vm.expect(r"Choice: ", 180, "status menu")
        pin = console_pin(vm)
        api = Api(port, pin=pin)
        api.wait_health()
        ok(f"bios-cd: the API's certificate (key pinned) is the one the console shows, {pin.confirm()}")
        st = api.login(PASSWORD + "wrong")
        if st != 401:
            fail(f"bios-cd: wrong password login -> {st}, want 401")
        if api.login(PASSWORD) != 200:
            fail("bios-cd: admin login with the wizard's password failed")
        ok("bios-cd: HTTPS API login through the port forward with the wizard's password")
        check_api_certificate(api, vm, pin)
        ok("bios-cd: GET /certificate names the certificate and key the console shows")
        check_pool(api, vm, 2)
        st, b = api.call("POST", "/vdisks", {"name": "vol1", "size_bytes": 64 << 20})
        if st not in (200, 201):
            fail(f"bios-cd: create vdisk -> {st} {b}")
        ok("bios-cd: virtual disk created")
        st, b = api.call("POST", "/vdisks", {"name": "data1", "size_bytes": DATA_VDISK_BYTES})
        if st not in (200, 201):
            fail(f"bios-cd: create vdisk data1 -> {st} {b}")
        export = nbd_start(api, vm, "data1")
        nbdcopy(vm, pattern, nbd_uri)
        nbd_stop(api, vm, export)
        ok(f"bios-cd: {DATA_VDISK_BYTES >> 20} MiB of random bytes written to data1 over NBD")
        before = identity(api, vm, port, pin)
        ok(f"bios-cd: cluster {before['cluster_id']}, member {before['member_id']}, "
           f"CA {before['ca_fingerprint'][:16]}..., API certificate {before['api_certificate'][:16]}...")
        # Let the API-state sync put the TLS key and users into the record, then reboot.
        time.sleep(12)
        vm.send("3")
        vm.answer("Type yes to confirm: ", "yes")
        vm.expect(r"system going down: Reboot", 60)
        vm.expect(r"Cairn \S+ starting as PID 1", 180, "PID 1 banner after reboot")
        m = vm.expect(r"(configured node bios-cd-node|=== Cairn setup ===)", 180)
        if "setup" in m.group(0):
            fail("bios-cd: the wizard ran again after reboot")
        vm.expect(r"Choice: ", 180, "status menu after reboot")
        ok("bios-cd: rebooted straight to service, no wizard")
        pin2 = console_pin(vm)
        if (pin2.cert, pin2.key) != (pin.cert, pin.key):
            fail(f"bios-cd: after the reboot the console shows certificate {pin2.cert} key {pin2.key}, "
                 f"before {pin.cert} key {pin.key}")
        pin = pin2
        api = Api(port, pin=pin)
        api.wait_health()
        ok(f"bios-cd: after the reboot the console shows the same certificate, served {pin.confirm()}")
        if api.login(PASSWORD + "wrong") != 401:
            fail("bios-cd: a wrong password is not refused after reboot")
        if api.login(PASSWORD) != 200:
            fail("bios-cd: login after reboot failed (users not kept)")
        ok("bios-cd: the admin password is kept (and a wrong one still refused)")
        after = identity(api, vm, port, pin)
        for k, v in before.items():
            if after[k] != v:
                fail(f"bios-cd: {k} changed across the reboot: {v} -> {after[k]}")
        ok("bios-cd: same cluster id, member id, members, cluster CA and API certificate after reboot")
        for name, size in (("vol1", 64 << 20), ("data1", DATA_VDISK_BYTES)):
            st, b = api.call("GET", f"/vdisks/{name}")
            if st != 200:
                fail(f"bios-cd: {name} after reboot -> {st} {b}")
            got = value(b).get("size_bytes")
            if got != size:
                fail(f"bios-cd: {name} is {got} bytes after reboot, want {size}")
        export = nbd_start(api, vm, "data1")
        nbdcopy(vm, nbd_uri, readback)
        nbd_stop(api, vm, export)
        if sha(readback) != sha(pattern):
            fail("bios-cd: data1 reads back different bytes after the reboot")
        ok(f"bios-cd: both virtual disks kept; data1 reads back its {DATA_VDISK_BYTES >> 20} MiB byte for byte")
        vm.send("4")
        vm.answer("Type yes to confirm: ", "yes")
        vm.expect(r"system going down: PowerOff", 60)
        try:
            vm.qemu.wait(60)
        except subprocess.TimeoutExpired:
            fail("bios-cd: QEMU still running after power-off")
        ok("bios-cd: menu power-off ends the VM")
    finally:
        vm.stop()
    if sha(d[2]) != foreign_before:
        fail("bios-cd: the disk with foreign data was modified")
    ok("bios-cd: the foreign disk is byte-for-byte unchanged")


def uefi_usb():
    d = [os.path.join(OUT, f"usb-nvme{i}.raw") for i in range(2)]
    make_disk(d[0]); make_disk(d[1])
    stick = os.path.join(OUT, "stick.img")
    shutil.copyfile(ISO, stick)
    before = sha(stick)
    vars_fd = os.path.join(OUT, "OVMF_VARS.fd")
    shutil.copyfile("/usr/share/OVMF/OVMF_VARS_4M.fd", vars_fd)
    port = free_port()
    args = ["-drive", "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
            "-drive", f"if=pflash,format=raw,file={vars_fd}",
            "-drive", f"if=none,id=usb,format=raw,file={stick}",
            "-device", "qemu-xhci", "-device", "usb-storage,drive=usb"] + nvme(d[0], "n0") + nvme(d[1], "n1")
    vm = Vm("uefi-usb", args, port)
    try:
        vm.expect(r"Cairn \S+ starting as PID 1", 240, "PID 1 banner")
        ok(f"uefi-usb: OVMF booted the USB stick, PID 1 up in {time.time() - vm.started:.1f} s")
        wizard(vm, False)
        vm.expect(r"Choice: ", 180, "status menu")
        pin = console_pin(vm)
        api = Api(port, pin=pin)
        api.wait_health()
        ok(f"uefi-usb: the API serves the certificate the console shows, {pin.confirm()}")
        if api.login(PASSWORD) != 200:
            fail("uefi-usb: admin login failed")
        ok("uefi-usb: HTTPS API login")
        check_pool(api, vm, 2)
    finally:
        vm.stop()
    if sha(stick) != before:
        fail("uefi-usb: the boot stick was written to")
    ok("uefi-usb: the boot medium is unchanged")


def pid1_fail():
    d = [os.path.join(OUT, f"cd-nvme{i}.raw") for i in range(2)]
    if not all(os.path.exists(p) for p in d):
        fail("pid1-fail needs the disks configured by bios-cd")
    port = free_port()
    args = ["-kernel", KERNEL, "-initrd", INITRD,
            "-append", "console=ttyS0,115200 panic=5 cairn.fail_node=1 no_timer_check"] + nvme(d[0], "n0") + nvme(d[1], "n1")
    vm = Vm("pid1-fail", args, port)
    try:
        for boot in (1, 2):
            vm.expect(r"Cairn \S+ starting as PID 1", 180, f"PID 1 banner (boot {boot})")
            vm.expect(r"FATAL: the node service failed", 180, "the injected node failure")
            vm.expect(r"PID 1 recovers by rebooting", 10)
            vm.expect(r"system going down: Reboot", 10)
        if "Kernel panic" in vm.buf or "Attempted to kill init" in vm.buf:
            fail("pid1-fail: the kernel panicked")
        ok("pid1-fail: node service failure -> orderly reboot (twice), no kernel panic")
    finally:
        vm.stop()


def cluster_view(api, vm):
    st, b = api.call("GET", "/cluster")
    if st != 200:
        fail(f"{vm.name}: GET /cluster -> {st} {b}")
    return value(b)


def wait_cluster(api, vm, what, pred, timeout=120):
    """Polls GET /cluster until pred(view) holds (a member applies raft entries a little later
    than the leader acknowledges them)."""
    deadline = time.time() + timeout
    while True:
        c = cluster_view(api, vm)
        if pred(c):
            return c
        if time.time() > deadline:
            fail(f"{vm.name}: {what} not seen within {timeout} s: {json.dumps(c)[:600]}")
        time.sleep(2)


def join():
    """Two appliances from the same ISO: a private link between them (QEMU socket netdev over
    UDP on 127.0.0.1, never leaving the host) carries the cluster; each one's API is reached
    through its own user-network port forward. Appliance 1 creates the cluster, appliance 2's
    wizard joins it with a token from 1's API; both see two members and each other's vdisks;
    appliance 2 reboots and comes back a member without the wizard."""
    p1, p2 = free_port(), free_port()
    udp1, udp2 = free_port(), free_port()
    private = {1: f"socket,id=c0,udp=127.0.0.1:{udp2},localaddr=127.0.0.1:{udp1}",
               2: f"socket,id=c0,udp=127.0.0.1:{udp1},localaddr=127.0.0.1:{udp2}"}
    vms, apis = {}, {}
    addr = {1: "10.10.0.1", 2: "10.10.0.2"}
    try:
        for i, port in ((1, p1), (2, p2)):
            d = [os.path.join(OUT, f"join{i}-nvme{k}.raw") for k in range(2)]
            make_disk(d[0]); make_disk(d[1])
            args = ["-cdrom", ISO, "-boot", "d",
                    "-netdev", private[i], "-device", f"virtio-net-pci,netdev=c0,mac=52:54:00:c0:00:0{i}"]
            args += nvme(d[0], "n0") + nvme(d[1], "n1")
            vms[i] = Vm(f"join{i}", args, port)
            # One early boot at a time: the kernel's IO-APIC timer check can fail under TCG when
            # two guests start at once on a busy host ("IO-APIC + timer doesn't work").
            vms[i].expect(r"Cairn \S+ starting as PID 1", 240, "PID 1 banner")
        v1, v2 = vms[1], vms[2]
        wizard(v1, False, cluster_link=("eth1", f"{addr[1]}/24"))
        # The menu (console thread) and the node service's lines come in either order.
        start = v1.pos
        m = v1.expect(r"cluster address (\S+)\n", 180, "the cluster address")
        if m.group(1) != f"{addr[1]}:8444":
            fail(f"join1: the cluster listens on {m.group(1)}, not on the private link {addr[1]}:8444")
        v1.pos = start
        v1.expect(re.escape(f"Cluster link: eth1 {addr[1]}:8444"), 60, "the status screen")
        pin1 = console_pin(v1)
        apis[1] = a1 = Api(p1, pin=pin1)
        a1.wait_health()
        ok(f"join1: the API serves the certificate the console shows, {pin1.confirm()}")
        if a1.login(PASSWORD) != 200:
            fail("join1: admin login failed")
        c1 = cluster_view(a1, v1)
        if [m["address"] for m in c1["members"]] != [f"{addr[1]}:8444"]:
            fail(f"join1: the member advertises {c1['members']}, not the private-link address")
        st, t = a1.call("POST", "/cluster/tokens")
        if st != 201:
            fail(f"join1: POST /cluster/tokens -> {st} {t}")
        token, tok_addr = value(t)["token"], value(t)["address"]
        if tok_addr != f"{addr[1]}:8444":
            fail(f"join1: the token names cluster address {tok_addr}, not {addr[1]}:8444")
        ok(f"join1: created cluster {c1['cluster_id']} on the private link {tok_addr}; join token issued")

        wizard(v2, False, cluster_link=("eth1", f"{addr[2]}/24"), join=(f"{addr[1]}:8444", token))
        m = v2.expect(r"(joined the cluster of \S+|cluster join failed: .*)\n", 240, "the join")
        if not m.group(1).startswith("joined"):
            fail(f"join2: {m.group(1)}")
        pin2 = console_pin(v2)
        apis[2] = a2 = Api(p2, pin=pin2)
        a2.wait_health()
        ok(f"join2: the API serves the certificate the console shows, {pin2.confirm()}")
        if a2.login(PASSWORD) != 200:
            fail("join2: admin login (its own admin account) failed")
        two = lambda c: c["cluster_id"] == c1["cluster_id"] and sorted(
            m["address"] for m in c["members"]) == [f"{addr[1]}:8444", f"{addr[2]}:8444"]
        c2 = wait_cluster(a2, v2, "two members of cluster 1", two)
        c1b = wait_cluster(a1, v1, "two members", two)
        if c2["me"] == c1b["me"]:
            fail(f"join: both appliances are member {c2['me']}")
        ok(f"join: both appliances list the same two members of cluster {c1['cluster_id']} "
           f"(members {c1b['me']} and {c2['me']}, private-link addresses)")

        st, b = a1.call("POST", "/vdisks", {"name": "from-one", "size_bytes": 32 << 20})
        if st not in (200, 201):
            fail(f"join1: create vdisk -> {st} {b}")
        wait_cluster(a2, v2, "appliance 1's vdisk", lambda c: "from-one" in c["vdisks"])
        st, b = a2.call("POST", "/vdisks", {"name": "from-two", "size_bytes": 32 << 20})
        if st not in (200, 201):
            fail(f"join2: create vdisk -> {st} {b}")
        wait_cluster(a1, v1, "appliance 2's vdisk", lambda c: "from-two" in c["vdisks"])
        ok("join: a vdisk created on either appliance is in the other's cluster state")

        # Its record (with the admin account) was saved right after the join.
        v2.send("3")
        v2.answer("Type yes to confirm: ", "yes")
        v2.expect(r"system going down: Reboot", 60)
        v2.expect(r"Cairn \S+ starting as PID 1", 180, "PID 1 banner after reboot")
        m = v2.expect(r"(configured node join2-node|=== Cairn setup ===)", 180)
        if "setup" in m.group(0):
            fail("join2: the wizard ran again after reboot")
        v2.expect(r"network: cluster link eth1 static " + re.escape(f"{addr[2]}/24"), 120,
                  "the cluster link after reboot")
        v2.expect(r"Choice: ", 180, "the menu after reboot")
        a2 = Api(p2, pin=pin2)
        a2.wait_health()
        ok(f"join2: after the reboot the API serves the same key, the certificate {pin2.confirm()}")
        if a2.login(PASSWORD) != 200:
            fail("join2: login after reboot failed")
        c2r = wait_cluster(a2, v2, "membership after reboot",
                           lambda c: two(c) and c["me"] == c2["me"] and c["leader"] is not None)
        ok(f"join2: rebooted straight to service, still member {c2r['me']} of cluster {c2r['cluster_id']}")
        st, b = a2.call("POST", "/vdisks", {"name": "after-reboot", "size_bytes": 32 << 20})
        if st not in (200, 201):
            fail(f"join2: create vdisk after reboot -> {st} {b}")
        wait_cluster(a1, v1, "the vdisk created after the reboot",
                     lambda c: {"from-one", "from-two", "after-reboot"} <= set(c["vdisks"]))
        ok("join2: after the reboot it still takes part (its new vdisk is in appliance 1's state)")
    finally:
        for vm in vms.values():
            vm.stop()


def pcap_vlan_frames(path, vid):
    """Ethernet frames in a pcap file that carry an 802.1Q tag with `vid`."""
    import struct
    data = open(path, "rb").read()
    if len(data) < 24:
        return 0
    endian = "<" if data[:4] == b"\xd4\xc3\xb2\xa1" else ">"
    off, n = 24, 0
    while off + 16 <= len(data):
        incl = struct.unpack(endian + "I", data[off + 8:off + 12])[0]
        frame = data[off + 16:off + 16 + incl]
        if len(frame) >= 16 and frame[12:14] == b"\x81\x00" and \
                (int.from_bytes(frame[14:16], "big") & 0xFFF) == vid:
            n += 1
        off += 16 + incl
    return n


def change_net(vm, vlan, address, want):
    vm.expect(r"Choice: ", 60, "the menu")
    vm.send("1")
    vm.answer("Network link [", "", 30)
    vm.answer("VLAN id (empty for none): ", vlan)
    vm.answer("[dhcp]: ", address)
    vm.expect(r"New network: .*\(applied now, without a reboot\)", 10)
    vm.answer("Type yes to confirm: ", "yes")
    m = vm.expect(r"(network applied: .*|error: .*)\n", 60, "the live network change")
    if not re.match(want, m.group(1)):
        fail(f"{vm.name}: network change gave {m.group(1)!r}, want {want!r}")
    vm.expect(r"saved: the next boot uses it too", 30)
    ok(f"{vm.name}: live network change -> {m.group(1)}")


def api_down(port, host="127.0.0.1", *, pin):
    try:
        Api(port, host, pin).call("GET", "/health", timeout=5)
    except Exception:
        return True
    return False


def live():
    d = [os.path.join(OUT, f"cd-nvme{i}.raw") for i in range(2)]
    if not all(os.path.exists(p) for p in d):
        fail("live needs the disks configured by bios-cd")
    port, port_static = free_port(), free_port()
    pcap = os.path.join(OUT, "live.pcap")
    # A 15 s watchdog (the appliance's default is 30 s) keeps the waits short: no reset for
    # over three timeouts while PID 1 kicks, then a reset within one once the kicks stop. The
    # kicks stop well after the network changes below are done.
    timeout, starve_after = 15, 65
    args = ["-kernel", KERNEL, "-initrd", INITRD,
            "-append", f"console=ttyS0,115200 no_timer_check cairn.watchdog_timeout={timeout} "
                       f"cairn.watchdog_starve_after={starve_after}",
            "-device", "i6300esb", "-action", "watchdog=reset",
            "-object", f"filter-dump,id=dump0,netdev=n0,file={pcap}"] + nvme(d[0], "n0") + nvme(d[1], "n1")
    vm = Vm("live", args, port, f",hostfwd=tcp:127.0.0.1:{port_static}-10.0.2.20:8443")
    try:
        m = vm.expect(r"watchdog armed: (.*) \((/dev/watchdog\d+)\), timeout (\d+) s", 180, "the watchdog")
        armed = time.time()
        if "i6300ESB" not in m.group(1):
            fail(f"live: PID 1 armed {m.group(1)!r}, not the i6300ESB")
        if int(m.group(3)) != timeout:
            fail(f"live: the watchdog's timeout is {m.group(3)} s, not the {timeout} s asked for")
        ok(f"live: PID 1 armed the {m.group(1)} ({m.group(2)}, timeout {m.group(3)} s)")
        vm.expect(r"configured node", 180)
        vm.expect(r"Choice: ", 180, "the menu")
        pin = console_pin(vm)
        Api(port, pin=pin).wait_health()
        ok(f"live: the API serves the certificate the console shows, {pin.confirm()}")
        change_net(vm, "", "10.0.2.20/24 10.0.2.2 10.0.2.3", r"network applied: eth0 10\.0\.2\.20/24$")
        api = Api(port_static, pin=pin)
        api.wait_health(30)
        ok(f"live: on the static address the API serves the pinned key, the console's certificate {pin.confirm()}")
        if api.login(PASSWORD) != 200:
            fail("live: login on the new static address failed")
        if not api_down(port, pin=pin):
            fail("live: the API still answers on the old DHCP address")
        ok("live: the API moved to the static address without a reboot (old address gone)")
        # The cluster runs on the management network here: its member follows the address.
        # (said while the change was applied: possibly before the lines change_net waited for)
        if "UI now at https://10.0.2.20:8443/" not in vm.buf:
            vm.expect(re.escape("UI now at https://10.0.2.20:8443/"), 30, "the new UI address on the console")
        moved = lambda want: lambda c: [m["address"] for m in c["members"]] == [want] \
            and c["leader"] is not None
        wait_cluster(api, vm, "the member at 10.0.2.20:8444", moved("10.0.2.20:8444"), 60)
        st, b = api.call("POST", "/vdisks", {"name": "after-readdress", "size_bytes": 32 << 20})
        if st not in (200, 201):
            fail(f"live: create vdisk after the address change -> {st} {b}")
        ok("live: the cluster member moved to 10.0.2.20:8444 without a reboot and commits there")
        change_net(vm, "42", "10.0.42.2/24", r"network applied: eth0\.42 10\.0\.42\.2/24$")
        time.sleep(4)  # the VLAN link's IPv6 start-up (DAD, router solicitation) goes out tagged
        if not api_down(port_static, pin=pin):
            fail("live: the API still answers on the untagged static address after the VLAN change")
        change_net(vm, "", "dhcp", r"network applied: eth0 10\.0\.2\.15/24$")
        back = Api(port, pin=pin)
        back.wait_health(30)
        if back.login(PASSWORD) != 200:
            fail("live: login back on the DHCP address failed")
        wait_cluster(back, vm, "the member back at 10.0.2.15:8444", moved("10.0.2.15:8444"), 60)
        ok("live: back on DHCP without a reboot, the API answers again and the member is at 10.0.2.15:8444")
        vlan_frames = pcap_vlan_frames(pcap, 42)
        if vlan_frames == 0:
            fail("live: no frame tagged with VLAN 42 reached the wire")
        ok(f"live: {vlan_frames} frames tagged VLAN 42 on the wire")
        if time.time() - armed > starve_after - 5:
            fail(f"live: the network steps took {time.time() - armed:.0f} s, too close to the "
                 f"kicks stopping at {starve_after} s: raise starve_after")
        while time.time() - armed < starve_after - 5:
            vm._read()
        if vm.buf.count(" starting as PID 1") != 1:
            fail("live: the node was reset while PID 1 was kicking the watchdog")
        ok(f"live: no reset in {time.time() - armed:.0f} s while PID 1 kicks the watchdog")
        vm.expect(r"watchdog: kicks stop now", starve_after, "the test hook stopping the kicks")
        stopped = time.time()
        vm.expect(r"Cairn \S+ starting as PID 1", 120, "a watchdog reset")
        took = time.time() - stopped
        # The last kick came one kick interval (5 s) before "kicks stop now": the reset is due
        # timeout - 5 s later. Much earlier is something else (a panic, a reboot).
        if took < timeout / 3:
            fail(f"live: the node restarted {took:.0f} s after the kicks stopped: not the watchdog")
        ok(f"live: the i6300esb reset the starved node {took:.0f} s after the kicks stopped")
        vm.expect(r"configured node", 180, "the node after the watchdog reset")
        vm.expect(r"network: DHCP on eth0", 60, "the saved network after the reset")
        ok("live: after the reset the node comes back with the last saved network")
    finally:
        vm.stop()


def own_netns(scenario):
    """Runs `scenario` again inside a network namespace of its own (unshare --net), where the
    test makes its links: nothing it sends can leave the namespace. Returns in the re-run; the
    outer run exits with the re-run's status, or passes as skipped when no namespace or tap
    can be made here."""
    if os.environ.get("CAIRN_TEST_NETNS") == scenario:
        return
    if not os.path.exists("/dev/net/tun"):
        print(f"skipped: {scenario} needs /dev/net/tun for a tap link", flush=True)
        sys.exit(0)
    for t in ("unshare", "ip", "ethtool"):
        if not shutil.which(t):
            print(f"skipped: {scenario} needs {t} (ci/setup.sh installs it)", flush=True)
            sys.exit(0)
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        print(f"skipped: {scenario} cannot make a network namespace: {probe.stderr.strip()}", flush=True)
        sys.exit(0)
    env = dict(os.environ, CAIRN_TEST_NETNS=scenario)
    r = subprocess.run(["unshare", "--net", sys.executable, os.path.abspath(__file__), scenario], env=env)
    sys.exit(r.returncode)


def netns_tap(tap, addr):
    """Inside the test's namespace: loopback up and a tap link for QEMU with `addr` (the DHCP
    server's side). Checksums of what the server sends are computed here, not left to an
    offload the guest's packet socket would see unfinished. Skips when no tap can be made."""
    r = subprocess.run(["ip", "tuntap", "add", "dev", tap, "mode", "tap"], capture_output=True, text=True)
    if r.returncode != 0:
        print(f"skipped: cannot make a tap link: {r.stderr.strip()}", flush=True)
        sys.exit(0)
    for cmd in (["ip", "link", "set", "lo", "up"], ["ip", "addr", "add", addr, "dev", tap],
                ["ip", "link", "set", tap, "up"], ["ethtool", "-K", tap, "tx", "off"]):
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            fail(f"{' '.join(cmd)}: {r.stderr.strip()}")


def dhcp_renew():
    """Direct kernel boot on two blank disks, eth0 a tap link in a network namespace of the
    test's own, served by the test's DHCP server (tests/appliance/dhcpserver.py; 16 s leases,
    renewal every 4 s). The wizard sets up DHCP and creates a cluster on the management
    network; the node gets address A and the API answers there. After a renewal of A (unicast
    to the server) was acknowledged, the server refuses the next renewal (NAK) and offers B: the node drops A, takes B, says so on the
    console and in its log ring (menu 2), the API answers on B and no longer on A, the cluster
    member moves to B and commits there, and renewals of B go on without a change."""
    own_netns("dhcp-renew")
    from dhcpserver import DhcpServer
    d = [os.path.join(OUT, f"dhcp-nvme{i}.raw") for i in range(2)]
    make_disk(d[0]); make_disk(d[1])
    server, a, b = "10.99.0.1", "10.99.0.50", "10.99.0.77"
    netns_tap("tap0", f"{server}/24")
    srv = DhcpServer("tap0", server, 24, a)
    net = ["-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no,vnet_hdr=off",
           "-device", "virtio-net-pci,netdev=n0"]
    args = ["-kernel", KERNEL, "-initrd", INITRD, "-append", "console=ttyS0,115200 no_timer_check"]
    vm = Vm("dhcp-renew", args + nvme(d[0], "n0") + nvme(d[1], "n1"), 0, net=net)
    try:
        wizard(vm, False)
        vm.expect(r"network: eth0 " + re.escape(f"{a}/24"), 60, "the first lease on eth0")
        pin = console_pin(vm)
        api = Api(8443, a, pin)
        api.wait_health(60, f"on {a}")
        ok(f"dhcp-renew: the API serves the certificate the console shows, {pin.confirm()}")
        if api.login(PASSWORD) != 200:
            fail(f"dhcp-renew: login on {a} failed")
        member_at = lambda ip: lambda c: [m["address"] for m in c["members"]] == [f"{ip}:8444"] \
            and c["leader"] is not None
        wait_cluster(api, vm, f"the member at {a}:8444", member_at(a), 60)
        ok(f"dhcp-renew: leased {a} from the test's DHCP server; the API answers there, the member is at {a}:8444")

        def wait_log(what, pred, timeout=60):
            deadline = time.time() + timeout
            while True:
                e = [x for x in srv.entries() if pred(x)]
                if e:
                    return e
                if time.time() > deadline:
                    fail(f"dhcp-renew: no {what} within {timeout} s; the server saw: "
                         + "; ".join(f"{x['type']} {x['ciaddr']}->{x['answer']}" for x in srv.entries()))
                vm._read()
                time.sleep(0.5)
        renewed = lambda ip: lambda x: x.get("renewal") and x["ciaddr"] == ip and x["answer"] == f"ACK {ip}"
        first = wait_log(f"acknowledged renewal of {a}", renewed(a))[0]
        if "address changed" in vm.buf:
            fail("dhcp-renew: a renewal with the same address was taken for a change")
        # At half the lease, to the server that gave it (RFC 2131 4.4.5); a broadcast here
        # would be the rebinding at 7/8 of the lease, after a unicast renewal failed.
        if not first["unicast"]:
            fail(f"dhcp-renew: the renewal of {a} was broadcast, not sent to the server")
        ok(f"dhcp-renew: a renewal of {a} (unicast to the server) was acknowledged and changed nothing")

        # The lease changes address: the next renewal of A is refused, B is offered.
        moved_at = time.time()
        srv.move_to(b)
        vm.expect(re.escape(f"network: DHCP lease for {a} lost on eth0; address removed"), 60,
                  "the refused renewal taking A off")
        vm.expect(re.escape(f"network: eth0 {b}/24"), 60, "the new lease on eth0")
        if f"network: address changed from {a} to {b}; UI now at https://{b}:8443/" not in vm.buf:
            vm.expect(re.escape(f"network: address changed from {a} to {b}; UI now at https://{b}:8443/"),
                      30, "the new UI address on the console")
        log = [x for x in srv.entries() if x["t"] >= moved_at]
        steps = [(x["type"], x["answer"]) for x in log]
        want = [("REQUEST", "NAK"), ("DISCOVER", f"OFFER {b}"), ("REQUEST", f"ACK {b}")]
        if steps[:3] != want or not log[0].get("renewal") or log[0]["ciaddr"] != a:
            fail(f"dhcp-renew: the server saw {steps}, want a renewal of {a} refused, then {want[1:]}")
        ok(f"dhcp-renew: renewal of {a} refused (NAK), {b} offered and acknowledged; the node took {b}")
        api = Api(8443, b, pin)
        api.wait_health(60, f"on {b}")
        how = pin.confirm()
        names = check_names_address(vm, b, pin)
        ok(f"dhcp-renew: on {b} the API serves the pinned key in a certificate naming {b} ({', '.join(names)}); "
           f"the console shows it {how}")
        if api.login(PASSWORD) != 200:
            fail(f"dhcp-renew: login on {b} failed")
        if not api_down(8443, a, pin=pin):
            fail(f"dhcp-renew: the API still answers on the old address {a}")
        ok(f"dhcp-renew: the API answers on {b} and no longer on {a}, without a reboot")
        wait_cluster(api, vm, f"the member at {b}:8444", member_at(b), 60)
        st, body = api.call("POST", "/vdisks", {"name": "after-renewal", "size_bytes": 32 << 20})
        if st not in (200, 201):
            fail(f"dhcp-renew: create vdisk after the renewal -> {st} {body}")
        ok(f"dhcp-renew: the cluster member moved to {b}:8444 and commits there")

        # In the log ring: the menu's "show logs" prints it without the console's "cairn: "
        # prefix, then the status screen again.
        vm.send("2")
        vm.expect(r"\n" + re.escape(f"network: address changed from {a} to {b}; UI now at https://{b}:8443/"),
                  30, "the address change in the log ring")
        vm.expect(re.escape(f"UI: https://{b}:8443/"), 30, "the status screen's new UI address")
        ok("dhcp-renew: the change is in the node's log (menu: show logs) and on the status screen")
        # The same ring through the HTTPS API.
        change = f"network: address changed from {a} to {b}; UI now at https://{b}:8443/"
        st, body = api.call("GET", "/system/log?limit=1000")
        texts = [line["text"] for line in body.get("lines", [])] if st == 200 else []
        if not any(change in t for t in texts):
            fail(f"dhcp-renew: GET /system/log -> {st}: the address change is not among its {len(texts)} lines")
        ok("dhcp-renew: the API serves the same log (GET /system/log)")

        since = time.time()
        wait_log(f"acknowledged renewal of {b}", lambda x: x["t"] >= since and renewed(b)(x))
        # (counted on the console: "show logs" above printed the ring's copies too)
        if vm.buf.count("cairn: network: address changed from") != 1 \
                or vm.buf.count("cairn: network: DHCP lease for") != 1:
            fail("dhcp-renew: the address changed again after the move")
        if api.call("GET", "/health")[0] != 200:
            fail(f"dhcp-renew: the API stopped answering on {b} after a renewal")
        ok(f"dhcp-renew: renewals of {b} go on and change nothing")
    finally:
        vm.stop()
        srv.stop()


def netns_bridge(bridge, addr, taps):
    """Inside the test's namespace: loopback up, a bridge with `addr` (the DHCP server's side)
    and a tap link for each QEMU on it, so the appliances reach each other and the server and
    nothing else. Checksums are computed here, as in `netns_tap`. Skips when no tap can be made."""
    r = subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], capture_output=True, text=True)
    if r.returncode != 0:
        print(f"skipped: cannot make a bridge: {r.stderr.strip()}", flush=True)
        sys.exit(0)
    for tap in taps:
        r = subprocess.run(["ip", "tuntap", "add", "dev", tap, "mode", "tap"], capture_output=True, text=True)
        if r.returncode != 0:
            print(f"skipped: cannot make a tap link: {r.stderr.strip()}", flush=True)
            sys.exit(0)
    cmds = [["ip", "link", "set", "lo", "up"], ["ip", "addr", "add", addr, "dev", bridge],
            ["ip", "link", "set", bridge, "up"], ["ethtool", "-K", bridge, "tx", "off"]]
    for tap in taps:
        cmds += [["ip", "link", "set", tap, "master", bridge], ["ip", "link", "set", tap, "up"],
                 ["ethtool", "-K", tap, "tx", "off"]]
    for cmd in cmds:
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            fail(f"{' '.join(cmd)}: {r.stderr.strip()}")


def control(api, vm, action):
    """POST /control {"action": ...}: what `cairn <command> --server` sends (the reply is
    {"kind": ..., "value": ...})."""
    st, b = api.call("POST", "/control", {"action": action})
    if st != 200:
        fail(f"{vm.name}: POST /control {action} -> {st} {b}")
    return b


def rejoin_dhcp():
    """Two appliances on one bridge in a network namespace of the test's own, each with its own
    DHCP lease from the test's server (by MAC). Appliance 1's wizard creates a cluster on its
    management address, appliance 2's wizard joins it (token from 1's API, 1's address).
    Appliance 2 is shut down from its menu, its lease moves to another address, and it is
    powered on again: it comes back configured on the new address, and the cluster follows
    (its member address updated and committed, the same member id, both members up and one
    leader in both appliances' GET /cluster and `cluster status`), the API answers on the new
    address, and vdisks made on either appliance after the move reach the other."""
    own_netns("rejoin-dhcp")
    from dhcpserver import DhcpServer
    server, a, b, b2 = "10.99.1.1", "10.99.1.50", "10.99.1.60", "10.99.1.77"
    mac = {1: "52:54:00:c1:00:01", 2: "52:54:00:c1:00:02"}
    netns_bridge("br0", f"{server}/24", ["tap1", "tap2"])
    srv = DhcpServer("br0", server, 24, leases={mac[1]: a, mac[2]: b})
    disks = {}
    for i in (1, 2):
        disks[i] = [os.path.join(OUT, f"rejoin{i}-nvme{k}.raw") for k in range(2)]
        make_disk(disks[i][0]); make_disk(disks[i][1])

    def boot(i):
        net = ["-netdev", f"tap,id=n0,ifname=tap{i},script=no,downscript=no,vnet_hdr=off",
               "-device", f"virtio-net-pci,netdev=n0,mac={mac[i]}"]
        args = ["-kernel", KERNEL, "-initrd", INITRD, "-append", "console=ttyS0,115200 no_timer_check"]
        return Vm(f"rejoin-dhcp{i}", args + nvme(disks[i][0], "n0") + nvme(disks[i][1], "n1"), 0, net=net)

    def lease_log():
        return "; ".join(f"{x['mac'][-2:]} {x['type']} {x['ciaddr']}->{x['answer']}" for x in srv.entries())

    vms = {}
    try:
        vms[1] = v1 = boot(1)
        vms[2] = v2 = boot(2)
        wizard(v1, False)
        v1.expect(r"network: eth0 " + re.escape(f"{a}/24"), 60, "appliance 1's lease")
        pin1 = console_pin(v1)
        a1 = Api(8443, a, pin1)
        a1.wait_health(60, f"on {a}")
        ok(f"rejoin-dhcp1: the API serves the certificate the console shows, {pin1.confirm()}")
        if a1.login(PASSWORD) != 200:
            fail(f"rejoin-dhcp1: login on {a} failed")
        c1 = wait_cluster(a1, v1, f"the member at {a}:8444",
                          lambda c: [m["address"] for m in c["members"]] == [f"{a}:8444"]
                          and c["leader"] is not None, 60)
        st, t = a1.call("POST", "/cluster/tokens")
        if st != 201 or value(t)["address"] != f"{a}:8444":
            fail(f"rejoin-dhcp1: POST /cluster/tokens -> {st} {t}")
        ok(f"rejoin-dhcp1: leased {a}, created cluster {c1['cluster_id']} there; join token issued")

        wizard(v2, False, join=(f"{a}:8444", value(t)["token"]))
        v2.expect(r"network: eth0 " + re.escape(f"{b}/24"), 60, "appliance 2's lease")
        m = v2.expect(r"(joined the cluster of \S+|cluster join failed: .*)\n", 180, "the join")
        if not m.group(1).startswith("joined"):
            fail(f"rejoin-dhcp2: {m.group(1)}")
        pin2 = console_pin(v2)
        a2 = Api(8443, b, pin2)
        a2.wait_health(60, f"on {b}")
        ok(f"rejoin-dhcp2: the API serves the certificate the console shows, {pin2.confirm()}")
        if a2.login(PASSWORD) != 200:
            fail(f"rejoin-dhcp2: login on {b} failed")

        def members_at(addrs):
            def pred(c):
                ms = c["members"]
                return (c["cluster_id"] == c1["cluster_id"] and c["leader"] is not None
                        and sorted(m["address"] for m in ms) == sorted(f"{x}:8444" for x in addrs)
                        and all(m["health"] == "up" for m in ms))
            return pred
        c2 = wait_cluster(a2, v2, f"members at {a} and {b}, both up", members_at([a, b]))
        wait_cluster(a1, v1, f"members at {a} and {b}, both up", members_at([a, b]))
        me2 = c2["me"]
        st, body = a2.call("POST", "/vdisks", {"name": "before-move", "size_bytes": 32 << 20})
        if st not in (200, 201):
            fail(f"rejoin-dhcp2: create vdisk -> {st} {body}")
        wait_cluster(a1, v1, "appliance 2's vdisk", lambda c: "before-move" in c["vdisks"])
        ok(f"rejoin-dhcp2: leased {b} and joined through the wizard as member {me2}; both appliances "
           f"list {a}:8444 and {b}:8444 up; its vdisk is in appliance 1's state")

        names = check_names_address(v2, b, pin2)
        if b2 in names:
            fail(f"rejoin-dhcp2: the certificate names {b2} before the node ever had it: {names}")
        # Shut down from the menu; while it is off its lease moves to another address.
        v2.send("4")
        v2.answer("Type yes to confirm: ", "yes")
        v2.expect(r"system going down: PowerOff", 60)
        try:
            v2.qemu.wait(60)
        except subprocess.TimeoutExpired:
            fail("rejoin-dhcp2: QEMU did not exit after the power-off")
        v2.stop()
        srv.move_to(b2, mac[2])
        wait_cluster(a1, v1, "appliance 2 seen down",
                     lambda c: any(m["id"] == me2 and m["health"] == "down" for m in c["members"]), 60)
        ok(f"rejoin-dhcp2: powered off from the menu; appliance 1 shows member {me2} down; its lease is now {b2}")

        powered_on = time.time()
        vms[2] = v2 = boot(2)
        m = v2.expect(r"(configured node rejoin-dhcp2-node|=== Cairn setup ===)", 180, "the node after power-on")
        if "setup" in m.group(0):
            fail("rejoin-dhcp2: the wizard ran again after the power-on")
        v2.expect(r"network: eth0 " + re.escape(f"{b2}/24"), 60, "appliance 2's new lease")
        # (at the start when the lease came first, else when the member follows it)
        v2.expect(r"(cluster address|the cluster member moved from \S+ to) " + re.escape(f"{b2}:8444"), 120,
                  "the cluster member on the new address")
        acks = [x for x in srv.entries() if x["t"] >= powered_on and x["mac"] == mac[2] and x["answer"].startswith("ACK")]
        if not acks or any(x["answer"] != f"ACK {b2}" for x in acks):
            fail(f"rejoin-dhcp2: after power-on want only {b2} acknowledged; the server saw: {lease_log()}")
        # The same node: its key (kept in its configuration record) is still the one pinned.
        pin2.vm = v2
        a2 = Api(8443, b2, pin2)
        a2.wait_health(60, f"on {b2}")
        how = pin2.confirm()
        names = check_names_address(v2, b2, pin2)
        ok(f"rejoin-dhcp2: on {b2} the API serves the key pinned before the move, in a certificate naming {b2} "
           f"({', '.join(names)}); the console shows it {how}")
        if a2.login(PASSWORD) != 200:
            fail(f"rejoin-dhcp2: login on {b2} failed")
        if not api_down(8443, b, pin=pin2):
            fail(f"rejoin-dhcp2: something still answers on the old address {b}")
        ok(f"rejoin-dhcp2: back without the wizard on {b2} (the server acknowledged only {b2}); the API answers there")

        c2 = wait_cluster(a2, v2, f"members at {a} and {b2}, both up", members_at([a, b2]))
        c1 = wait_cluster(a1, v1, f"members at {a} and {b2}, both up", members_at([a, b2]))
        if c2["me"] != me2:
            fail(f"rejoin-dhcp2: came back as member {c2['me']}, not {me2}")
        if c1["leader"] != c2["leader"]:
            fail(f"rejoin-dhcp: the appliances name different leaders ({c1['leader']}, {c2['leader']})")
        for api, vm in ((a1, v1), (a2, v2)):
            r = control(api, vm, "cluster_status")
            ms = value(r).get("members") if isinstance(r, dict) and r.get("kind") == "cluster" else None
            if ms is None or sorted(x["address"] for x in ms) != sorted([f"{a}:8444", f"{b2}:8444"]) \
                    or any(x["health"] != "up" for x in ms):
                fail(f"{vm.name}: cluster status shows {ms}, want {a}:8444 and {b2}:8444 up")
        ok(f"rejoin-dhcp: member {me2} is at {b2}:8444 in both appliances' GET /cluster and cluster status, "
           f"both members up, one leader ({c1['leader']})")

        st, body = a2.call("POST", "/vdisks", {"name": "after-move-2", "size_bytes": 32 << 20})
        if st not in (200, 201):
            fail(f"rejoin-dhcp2: create vdisk on {b2} -> {st} {body}")
        st, body = a1.call("POST", "/vdisks", {"name": "after-move-1", "size_bytes": 32 << 20})
        if st not in (200, 201):
            fail(f"rejoin-dhcp1: create vdisk after the move -> {st} {body}")
        want = {"before-move", "after-move-1", "after-move-2"}
        wait_cluster(a1, v1, "the vdisks made after the move", lambda c: want <= set(c["vdisks"]))
        wait_cluster(a2, v2, "the vdisks made after the move", lambda c: want <= set(c["vdisks"]))
        ok("rejoin-dhcp: after the move both appliances commit (a vdisk made on either is in the other's state)")
    finally:
        for vm in vms.values():
            vm.stop()
        srv.stop()


def cpio_newc(entries):
    """entries: (name, mode, data_bytes, rdev_major, rdev_minor); fixed mtime/uid 0."""
    out = bytearray()
    for ino, (name, mode, data, maj, mnr) in enumerate(entries + [("TRAILER!!!", 0, b"", 0, 0)], 1):
        nb = name.encode() + b"\0"
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, maj, mnr, len(nb), 0]
        out += b"070701" + b"".join(b"%08X" % f for f in fields) + nb
        out += b"\0" * ((-len(out)) % 4)
        out += data
        out += b"\0" * ((-len(out)) % 4)
    return bytes(out)


def anchor_boot_s(kernel, initrd):
    vm = Vm("anchor", ["-kernel", kernel, "-initrd", initrd, "-append", "console=ttyS0,115200 quiet no_timer_check"], free_port())
    try:
        vm.expect(r"ANCHOR-SHELL-READY", 120)
        vm.expect(r"# ", 30)
        return time.time() - vm.started
    finally:
        vm.stop()


def ours_boot_s(args, port):
    vm = Vm("bench-ours", args, port)
    try:
        api = Api(port)  # unpinned: the benchmark times the first answer, the tests check the certificate
        deadline = time.time() + 240
        while time.time() < deadline:
            try:
                if api.call("GET", "/health")[0] == 200:
                    break
            except Exception:
                time.sleep(0.25)
        else:
            fail("bench: the API never answered")
        t = time.time() - vm.started
        time.sleep(5)
        vm.send("")
        m = vm.expect(r"node RSS (\d+) MiB", 30)
        return t, int(m.group(1))
    finally:
        vm.stop()


def bench():
    runs = int(os.environ.get("BENCH_RUNS", "3"))
    d = [os.path.join(OUT, f"bench-nvme{i}.raw") for i in range(2)]
    make_disk(d[0]); make_disk(d[1])
    disks = nvme(d[0], "n0") + nvme(d[1], "n1")
    direct = ["-kernel", KERNEL, "-initrd", INITRD, "-append", "console=ttyS0,115200 quiet no_timer_check"] + disks
    port = free_port()
    vm = Vm("bench-setup", direct, port)
    try:
        wizard(vm, False)
        vm.expect(r"Choice: ", 180)
        time.sleep(12)
        vm.send("4")
        vm.answer("Type yes to confirm: ", "yes")
        vm.qemu.wait(60)
    finally:
        vm.stop()
    deb = sorted(p for p in os.listdir("/boot") if p.startswith("vmlinuz-"))
    if not deb:
        fail("bench: no Debian kernel in /boot")
    bb = open(shutil.which("busybox"), "rb").read()
    init = b"#!/bin/busybox sh\necho ANCHOR-SHELL-READY\nexec /bin/busybox sh\n"
    anchor_initrd = os.path.join(OUT, "anchor-initrd.cpio")
    with open(anchor_initrd, "wb") as f:
        f.write(cpio_newc([("dev", 0o40755, b"", 0, 0), ("dev/console", 0o20600, b"", 5, 1),
                           ("bin", 0o40755, b"", 0, 0), ("bin/busybox", 0o100755, bb, 0, 0),
                           ("bin/sh", 0o100755, bb, 0, 0), ("init", 0o100755, init, 0, 0)]))
    med = lambda xs: sorted(xs)[len(xs) // 2]
    ours = [ours_boot_s(direct, free_port()) for _ in range(runs)]
    iso = [ours_boot_s(["-cdrom", ISO, "-boot", "d"] + disks, free_port())[0] for _ in range(runs)]
    anchor = [anchor_boot_s("/boot/" + deb[-1], anchor_initrd) for _ in range(runs)]
    o, a = med([t for t, _ in ours]), med(anchor)
    line = lambda metric, ours_v, anchor_v, name, hib: print(json.dumps({
        "bench": "boot", "metric": metric, "ours": round(ours_v, 2), "anchor": anchor_v and round(anchor_v, 2),
        "anchor_name": name, "ratio": anchor_v and round(ours_v / anchor_v, 2), "higher_is_better": hib}), flush=True)
    line("tcg_direct_boot_to_api_s", o, a, "Debian kernel + busybox-static initramfs to shell prompt", False)
    line("tcg_iso_bios_boot_to_api_s", med(iso), a, "Debian kernel + busybox-static initramfs to shell prompt (direct boot)", False)
    line("iso_size_mib", os.path.getsize(ISO) / (1 << 20), 64, "target", False)
    line("node_rss_idle_mib", med([r for _, r in ours]), 150, "target", False)


if __name__ == "__main__":
    {"bios-cd": bios_cd, "join": join, "uefi-usb": uefi_usb, "pid1-fail": pid1_fail, "live": live,
     "dhcp-renew": dhcp_renew, "rejoin-dhcp": rejoin_dhcp, "bench": bench}[sys.argv[1]]()
