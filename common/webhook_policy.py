"""Where a webhook may be sent: public addresses only, unless the operator allows more.

A webhook URL is chosen by whoever submits work, and the dispatcher POSTs to it from
inside the cluster, so an unchecked URL would let a submitter reach what only the
cluster can: loopback services, the cloud metadata endpoint, private networks (SSRF).
:class:`WebhookPolicy` resolves a URL's host and refuses it when any address it names
is not public:

* unspecified (``0.0.0.0/8``, ``::``), loopback (``127/8``, ``::1``), private (RFC 1918,
  ``fc00::/7``), link-local (``169.254/16``, ``fe80::/10``), carrier-grade NAT
  (``100.64/10``), multicast, broadcast, reserved and documentation ranges, NAT64
  (``64:ff9b::/96``, ``64:ff9b:1::/48``), and IPv4-mapped or 6to4 forms of any of those;
* cloud metadata addresses (``169.254.169.254``, ``fd00:ec2::254``, ...) and names
  (``metadata.google.internal``, ...), and ``localhost`` names.

``settings.webhook_allow`` (``ZQ_WEBHOOK_ALLOW``) lifts the refusal for a host name
(matched exactly, case-insensitively), an IP address, or a CIDR network the resolved
address falls in; a metadata address only by itself, not by a network holding it.

A host is read the way resolvers read it, so odd spellings cannot slip through:
IPv4 written in decimal, octal or hex, or with fewer than four parts (``2130706433``,
``0x7f.1``, ``0177.0.0.1``, ``127.1``) is that address; a trailing dot is dropped;
non-ASCII names are IDNA-encoded first (full-width digits become ASCII ones); a host
whose last label is a number but not a valid IPv4 address is refused.

The policy is applied twice: when work naming a webhook is submitted (a name that does
not resolve then is refused), and by the dispatcher right before each delivery, which
then connects to the address it checked (so a name re-pointed at an internal address
after submit, DNS rebinding, is refused too).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from common.errors import ConfigError, InvalidJob
from common.webhooks import redact_url, validate_webhook_url

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

Resolver = Callable[[str, int], Sequence[str]]
"""``(host name, port) -> IP address strings``; raises ``OSError`` when it cannot resolve."""

ALLOW_ENV = "ZQ_WEBHOOK_ALLOW"

METADATA_NAMES = frozenset({
    "metadata.google.internal", "metadata.goog", "metadata", "instance-data",
    "instance-data.ec2.internal"})
"""Host names of cloud metadata services."""

METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean...
    "169.254.170.2",  # AWS ECS task credentials
    "169.254.170.23",  # AWS EKS pod identity
    "100.100.100.200",  # Alibaba Cloud
    "168.63.129.16",  # Azure WireServer: a public address, hence listed by name
    "fd00:ec2::254",  # AWS IMDS over IPv6
    "fd00:ec2::23",  # AWS EKS pod identity over IPv6
))
"""Addresses of cloud metadata and credential services."""

# (rule, networks): the first rule an address falls in names why it is refused.
_RULES: tuple[tuple[str, tuple[IPNetwork, ...]], ...] = tuple(
    (rule, tuple(ipaddress.ip_network(n) for n in networks)) for rule, networks in (
        ("unspecified", ("0.0.0.0/8", "::/128")),
        ("loopback", ("127.0.0.0/8", "::1/128")),
        ("private", ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")),
        ("link-local", ("169.254.0.0/16", "fe80::/10")),
        ("carrier-grade NAT", ("100.64.0.0/10",)),
        ("multicast", ("224.0.0.0/4", "ff00::/8")),
        ("NAT64", ("64:ff9b::/96", "64:ff9b:1::/48")),
        ("reserved", ("240.0.0.0/4", "::/96", "fec0::/10")),  # incl. broadcast, v4-compatible
    ))
_HOST_NAME = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*")
_NUMBER = re.compile(r"0x[0-9a-f]*|[0-9]+")


class WebhookRefused(InvalidJob):
    """A webhook URL names a host the policy refuses; ``rule`` says which rule.

    Being an ``InvalidJob`` on field ``webhook``, a refusal at submit exits ``zq`` with 2.
    """

    def __init__(self, rule: str, limit: str, url: str) -> None:
        self.rule = rule
        super().__init__("webhook", limit, redact_url(url))


class WebhookUnresolvable(InvalidJob):
    """A webhook URL's host name did not resolve (now: it may later, or never)."""

    def __init__(self, host: str, reason: str, url: str) -> None:
        self.host = host
        self.reason = reason
        super().__init__("webhook", f"host {host} does not resolve ({reason})", redact_url(url))


@dataclass(frozen=True)
class WebhookTarget:
    """A vetted webhook URL: where to connect, and what to call the host there.

    ``addresses`` were resolved and checked just now; connect only to them, while
    sending ``host`` in the Host header and as the TLS server name.
    """

    url: str
    scheme: str
    host: str  # ASCII, lower case, no brackets, no trailing dot
    port: int
    addresses: tuple[str, ...]
    request_target: str  # path and query, what goes on the request line

    @property
    def host_header(self) -> str:
        """``host[:port]`` as the Host header carries it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def system_resolve(host: str, port: int) -> list[str]:
    """The addresses ``getaddrinfo`` gives for ``host`` over TCP, in its order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    found: list[str] = []
    for info in infos:
        address = str(info[4][0]).partition("%")[0]  # drop an IPv6 zone id
        if address not in found:
            found.append(address)
    return found


def address_rule(address: IPAddress) -> str | None:
    """Why ``address`` may not receive webhooks (a rule's name), or None if it is public."""
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped
        if mapped is not None:
            rule = address_rule(mapped)
            return None if rule is None else f"{rule} (IPv4-mapped)"
        embedded = address.sixtofour
        if embedded is not None and (rule := address_rule(embedded)) is not None:
            return f"{rule} (6to4)"
    if address in METADATA_ADDRESSES:
        return "cloud metadata"
    for rule, networks in _RULES:
        if any(address in network for network in networks):
            return rule
    if not address.is_global or address.is_reserved:
        return "reserved"  # documentation, benchmarking, Teredo and other special ranges
    return None


def parse_host(host: str) -> str | IPAddress:
    """A URL host as a resolver would read it: an IP address, or a normalised name.

    ``ValueError`` for a host that is neither a valid address nor a valid name.
    """
    if ":" in host:  # only an IPv6 literal (from brackets) has one
        if "%" in host:
            raise ValueError("an IPv6 zone id is not allowed")
        return ipaddress.IPv6Address(host)
    name = host.lower()
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii").lower()
        except UnicodeError:
            raise ValueError("not a valid international host name") from None
    if name.endswith("."):
        name = name[:-1]
    labels = name.split(".")
    if labels and _NUMBER.fullmatch(labels[-1]):
        return _ipv4(labels)
    if not _HOST_NAME.fullmatch(name) or any(len(label) > 63 for label in labels):
        raise ValueError("not a valid host name")
    return name


def _ipv4(parts: list[str]) -> ipaddress.IPv4Address:
    """IPv4 in any form ``inet_aton`` takes: 1-4 parts, each decimal, 0-octal or 0x-hex."""
    if len(parts) > 4:
        raise ValueError("not a valid IPv4 address")
    numbers: list[int] = []
    for part in parts:
        try:
            if part.startswith("0x"):
                numbers.append(int(part[2:] or "0", 16))
            elif len(part) > 1 and part.startswith("0"):
                numbers.append(int(part, 8))
            else:
                numbers.append(int(part, 10))
        except ValueError:
            raise ValueError("not a valid IPv4 address") from None
    *leading, last = numbers
    if any(n > 255 for n in leading) or last >= 256 ** (5 - len(numbers)):
        raise ValueError("not a valid IPv4 address")
    value = last
    for index, number in enumerate(leading):
        value += number << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


class WebhookPolicy:
    """Vets webhook URLs against the public-addresses rule and an allow-list.

    ``allow`` entries are host names, IP addresses or CIDR networks (``settings.
    webhook_allow``); ``ConfigError`` for one that is none of those. ``resolver``
    looks names up (the system's by default; tests pass their own).
    """

    def __init__(self, allow: Iterable[str] = (), resolver: Resolver = system_resolve) -> None:
        self.resolver = resolver
        names: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in (e.strip() for e in allow):
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            try:
                parsed = parse_host(entry)
            except ValueError:
                parsed = None
            if not isinstance(parsed, str):
                raise ConfigError(f"{ALLOW_ENV}: {entry!r} is not a host name, an IP address "
                                  "or a CIDR network")
            names.add(parsed)
        self.allowed_names = frozenset(names)
        self.allowed_networks = tuple(networks)

    def vet(self, url: str) -> WebhookTarget:
        """Check ``url`` now; its target with the addresses checked, else ``InvalidJob``.

        ``WebhookRefused`` when the host, or any address it resolves to, is refused;
        ``WebhookUnresolvable`` when its name does not resolve; a plain ``InvalidJob``
        for a malformed URL.
        """
        validate_webhook_url(url)
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        port = parts.port or (443 if scheme == "https" else 80)
        try:
            host = parse_host(parts.hostname or "")
        except ValueError as exc:
            raise WebhookRefused("bad host", f"host {parts.hostname!r}: {exc}", url) from None
        target = f"{parts.path or '/'}{'?' + parts.query if parts.query else ''}"
        name = host if isinstance(host, str) else host.compressed
        checked = name not in self.allowed_names
        if checked:
            self._check_name(name, url)
        addresses = self._resolve(name, port, url) if isinstance(host, str) else (host,)
        if checked:
            for address in addresses:
                self._check_address(name, address, url)
        return WebhookTarget(url, scheme, name, port, tuple(a.compressed for a in addresses),
                             target)

    def _resolve(self, name: str, port: int, url: str) -> tuple[IPAddress, ...]:
        try:
            found = [ipaddress.ip_address(a) for a in self.resolver(name, port)]
        except (OSError, UnicodeError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise WebhookUnresolvable(name, reason or type(exc).__name__, url) from None
        if not found:
            raise WebhookUnresolvable(name, "no addresses", url)
        return tuple(found)

    def _check_name(self, name: str, url: str) -> None:
        if name in METADATA_NAMES:
            rule = "cloud metadata"
        elif name == "localhost" or name.endswith(".localhost"):
            rule = "loopback"
        else:
            return
        raise WebhookRefused(rule, f"host {name} is a {rule} name; name it in {ALLOW_ENV} "
                             "to allow it", url)

    def _check_address(self, name: str, address: IPAddress, url: str) -> None:
        rule = address_rule(address)
        if rule is None or self._allowed(address, exact=rule == "cloud metadata"):
            return
        where = address.compressed if name == address.compressed else \
            f"{name} resolves to {address.compressed}, which"
        raise WebhookRefused(rule, f"{where} is a {rule} address; only public addresses "
                             f"may receive webhooks unless {ALLOW_ENV} allows it", url)

    def _allowed(self, address: IPAddress, exact: bool) -> bool:
        candidates: list[IPAddress] = [address]
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            candidates.append(address.ipv4_mapped)
        # A metadata service is allowed only by its own address, never by a range that
        # happens to hold it (allowing 169.254.0.0/16 must not open 169.254.169.254).
        networks = [n for n in self.allowed_networks if not exact or n.num_addresses == 1]
        return any(c in n for c in candidates for n in networks if c.version == n.version)
