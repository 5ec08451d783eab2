"""The webhook SSRF policy: which targets are refused, which are allowed, and why.

Names are looked up through a fake resolver (a table), so every case is deterministic
and none needs the network; literal addresses must never reach the resolver at all.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from common.errors import ConfigError, InvalidJob
from common.webhook_policy import (
    WebhookPolicy,
    WebhookRefused,
    WebhookUnresolvable,
    parse_host,
)

PUBLIC = "93.184.216.34"
DNS: dict[str, list[str]] = {
    "hooks.example.com": [PUBLIC],
    "dual.example.com": [PUBLIC, "2606:2800:220:1:248:1893:25c8:1946"],
    "internal.example.com": ["10.1.2.3"],
    "sneaky.example.com": [PUBLIC, "127.0.0.1"],  # one bad address is enough
    "meta.example.com": ["169.254.169.254"],
    "v6loop.example.com": ["::1"],
    "mapped.example.com": ["::ffff:10.0.0.1"],
    "xn--bcher-kva.example": [PUBLIC],  # bücher.example
    "hooks.corp": ["10.20.30.40"],
    "localhost": ["127.0.0.1"],
    "metadata.google.internal": ["169.254.169.254"],
}


class FakeResolver:
    """Answers from ``DNS``; ``OSError`` for other names, as ``getaddrinfo`` would."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def __call__(self, host: str, port: int) -> Sequence[str]:
        self.asked.append(host)
        if host not in DNS:
            raise OSError(-2, "Name or service not known")
        return DNS[host]


def policy(*allow: str) -> tuple[WebhookPolicy, FakeResolver]:
    resolver = FakeResolver()
    return WebhookPolicy(allow, resolver), resolver


REFUSED = [
    # (url, rule) -- loopback, in every spelling a resolver accepts
    ("http://127.0.0.1/hook", "loopback"),
    ("http://127.1.2.3:8080/", "loopback"),
    ("http://2130706433/", "loopback"),  # decimal
    ("http://017700000001/", "loopback"),  # octal
    ("http://0x7f000001/", "loopback"),  # hex
    ("http://0x7f.1/", "loopback"),  # hex, two parts
    ("http://0177.0.0.01/", "loopback"),  # octal parts
    ("http://127.1/", "loopback"),  # short form
    ("http://127.0.0.1./", "loopback"),  # trailing dot
    ("http://\uff11\uff12\uff17.\uff10.\uff10.\uff11/", "loopback"),  # full-width digits
    ("http://127\u30020\u30020\u30021/", "loopback"),  # ideographic full stops
    ("http://[::1]/", "loopback"),
    ("http://[0:0:0:0:0:0:0:1]:9000/", "loopback"),
    ("http://[::ffff:127.0.0.1]/", "loopback (IPv4-mapped)"),
    ("http://[::ffff:7f00:1]/", "loopback (IPv4-mapped)"),
    ("http://[2002:7f00:1::1]/", "loopback (6to4)"),
    ("http://localhost/", "loopback"),
    ("http://LOCALHOST./", "loopback"),
    ("http://\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54/", "loopback"),  # full-width
    ("http://api.localhost/", "loopback"),
    ("http://v6loop.example.com/", "loopback"),
    ("http://sneaky.example.com/", "loopback"),
    # unspecified
    ("http://0.0.0.0/", "unspecified"),
    ("http://0/", "unspecified"),
    ("http://[::]/", "unspecified"),
    # private
    ("http://10.0.0.1/", "private"),
    ("http://172.16.5.4/", "private"),
    ("http://172.31.255.255/", "private"),
    ("http://192.168.1.1/", "private"),
    ("http://0xa000001/", "private"),
    ("http://[fc00::1]/", "private"),
    ("http://[fd12:3456::1]/", "private"),
    ("http://internal.example.com/", "private"),
    ("http://mapped.example.com/", "private (IPv4-mapped)"),
    ("http://[::ffff:192.168.0.1]/", "private (IPv4-mapped)"),
    # link-local
    ("http://169.254.1.1/", "link-local"),
    ("http://[fe80::1]/", "link-local"),
    # carrier-grade NAT
    ("http://100.64.0.1/", "carrier-grade NAT"),
    ("http://100.127.255.254/", "carrier-grade NAT"),
    # multicast, broadcast, reserved, documentation
    ("http://224.0.0.1/", "multicast"),
    ("http://[ff02::1]/", "multicast"),
    ("http://255.255.255.255/", "reserved"),
    ("http://240.0.0.1/", "reserved"),
    ("http://192.0.2.10/", "reserved"),
    ("http://[2001:db8::1]/", "reserved"),
    ("http://[::7f00:1]/", "reserved"),  # IPv4-compatible
    ("http://[2001::1]/", "reserved"),  # Teredo
    # NAT64 reaches IPv4 through a translator: refused whatever it embeds
    ("http://[64:ff9b::7f00:1]/", "NAT64"),
    ("http://[64:ff9b::5db8:d822]/", "NAT64"),
    ("http://[64:ff9b:1::a00:1]/", "NAT64"),
    # cloud metadata, by address and by name
    ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
    ("http://2852039166/", "cloud metadata"),  # 169.254.169.254 in decimal
    ("http://0xa9fea9fe/", "cloud metadata"),
    ("http://[fd00:ec2::254]/", "cloud metadata"),
    ("http://[::ffff:169.254.169.254]/", "cloud metadata (IPv4-mapped)"),
    ("http://100.100.100.200/", "cloud metadata"),
    ("http://168.63.129.16/", "cloud metadata"),
    ("http://metadata.google.internal/computeMetadata/v1/", "cloud metadata"),
    ("http://Metadata.Google.Internal./", "cloud metadata"),
    ("http://metadata/", "cloud metadata"),
    ("http://meta.example.com/", "cloud metadata"),
    # hosts no resolver should be asked about
    ("http://1.2.3.4.5/", "bad host"),
    ("http://256.1.1.1/", "bad host"),
    ("http://0x7g.1/", "bad host"),
    ("http://4294967296/", "bad host"),
    ("http://1.2.3.08/", "bad host"),  # 08 is not octal
    ("http://[fe80::1%25eth0]/", "bad host"),
    ("http://exa_mple-.com/", "bad host"),
]


@pytest.mark.parametrize(("url", "rule"), REFUSED)
def test_non_public_targets_are_refused_naming_the_field_and_rule(url: str, rule: str) -> None:
    checker, _ = policy()
    with pytest.raises(WebhookRefused) as caught:
        checker.vet(url)
    assert caught.value.field == "webhook"
    assert caught.value.rule == rule
    assert isinstance(caught.value, InvalidJob)
    if rule != "bad host":
        assert rule.partition(" (")[0] in caught.value.limit


@pytest.mark.parametrize("url", [u for u, _ in REFUSED if "example" not in u])
def test_literal_addresses_and_special_names_are_refused_without_a_lookup(url: str) -> None:
    checker, resolver = policy()
    with pytest.raises(WebhookRefused):
        checker.vet(url)
    assert resolver.asked == []


@pytest.mark.parametrize(("url", "host", "addresses"), [
    (f"http://{PUBLIC}/hook", PUBLIC, (PUBLIC,)),
    ("https://[2606:4700:4700::1111]/x", "2606:4700:4700::1111", ("2606:4700:4700::1111",)),
    ("https://hooks.example.com/zq?token=t", "hooks.example.com", (PUBLIC,)),
    ("https://HOOKS.example.com./zq", "hooks.example.com", (PUBLIC,)),
    ("http://dual.example.com/", "dual.example.com",
     (PUBLIC, "2606:2800:220:1:248:1893:25c8:1946")),
    ("http://b\u00fccher.example/", "xn--bcher-kva.example", (PUBLIC,)),
    ("http://1572395042/", PUBLIC, (PUBLIC,)),  # a public address in decimal is fine
    ("http://[::ffff:93.184.216.34]/", "::ffff:5db8:d822", ("::ffff:5db8:d822",)),
    ("http://8.8.8.8/", "8.8.8.8", ("8.8.8.8",)),
])
def test_public_targets_are_accepted_with_the_addresses_checked(
        url: str, host: str, addresses: tuple[str, ...]) -> None:
    checker, _ = policy()
    target = checker.vet(url)
    assert (target.host, target.addresses) == (host, addresses)


def test_the_target_keeps_what_the_request_needs() -> None:
    checker, _ = policy()
    target = checker.vet("https://hooks.example.com/a/b?token=x#frag")
    assert (target.scheme, target.port, target.request_target) == ("https", 443, "/a/b?token=x")
    assert target.host_header == "hooks.example.com"
    assert checker.vet("http://hooks.example.com:8080").request_target == "/"
    assert checker.vet("http://hooks.example.com:8080").host_header == "hooks.example.com:8080"
    v6 = checker.vet("http://[2606:4700:4700::1111]:81/")
    assert v6.host_header == "[2606:4700:4700::1111]:81"


@pytest.mark.parametrize(("allow", "url"), [
    (("127.0.0.1",), "http://127.0.0.1:8080/hook"),
    (("127.0.0.1",), "http://2130706433:8080/hook"),  # the same address, spelled oddly
    (("127.0.0.1",), "http://[::ffff:127.0.0.1]/hook"),  # and IPv4-mapped
    (("::1",), "http://[::1]/"),
    (("10.0.0.0/8",), "http://10.200.3.4/"),
    (("10.0.0.0/8",), "http://internal.example.com/"),
    ((" 192.168.0.0/16 ", "172.16.0.0/12"), "http://172.20.0.1/"),
    (("hooks.corp",), "http://hooks.corp/"),
    (("HOOKS.CORP.",), "http://Hooks.Corp/"),
    (("localhost",), "http://localhost:9000/"),
    (("169.254.169.254",), "http://169.254.169.254/"),  # named exactly: the operator's call
    (("metadata.google.internal",), "http://metadata.google.internal/"),
])
def test_the_allow_list_lifts_the_refusal(allow: tuple[str, ...], url: str) -> None:
    checker, _ = policy(*allow)
    assert checker.vet(url).url == url


@pytest.mark.parametrize(("allow", "url", "rule"), [
    (("127.0.0.1",), "http://127.0.0.2/", "loopback"),  # an address is not its network
    (("10.0.0.0/16",), "http://10.1.0.1/", "private"),
    (("10.0.0.0/8",), "http://sneaky.example.com/", "loopback"),  # every address counts
    (("hooks.corp",), "http://api.hooks.corp/", "bad host"),  # names match exactly
    (("127.0.0.1",), "http://localhost/", "loopback"),  # a name is allowed by name
    (("169.254.0.0/16",), "http://169.254.169.254/", "cloud metadata"),  # not by a range
    (("0.0.0.0/0",), "http://169.254.169.254/", "cloud metadata"),
    (("169.254.0.0/16",), "http://meta.example.com/", "cloud metadata"),
])
def test_the_allow_list_lifts_only_what_it_names(allow: tuple[str, ...], url: str,
                                                  rule: str) -> None:
    checker, _ = policy(*allow)
    with pytest.raises(InvalidJob) as caught:
        checker.vet(url)
    if rule == "bad host":  # api.hooks.corp is not in the fake DNS at all
        assert isinstance(caught.value, WebhookUnresolvable)
    else:
        assert isinstance(caught.value, WebhookRefused) and caught.value.rule == rule


def test_the_allow_list_still_admits_a_range_holding_metadata_for_other_addresses() -> None:
    checker, _ = policy("169.254.0.0/16")
    assert checker.vet("http://169.254.10.10/").addresses == ("169.254.10.10",)


@pytest.mark.parametrize("entry", ["10.0.0.0/33", "bad host!", "http://x/", "1.2.3.4.5",
                                   "10.0.0.1-10.0.0.9"])
def test_a_bad_allow_entry_is_a_config_error(entry: str) -> None:
    with pytest.raises(ConfigError, match="ZQ_WEBHOOK_ALLOW"):
        WebhookPolicy((entry,))


def test_a_name_that_does_not_resolve_is_refused_with_the_reason() -> None:
    checker, resolver = policy()
    with pytest.raises(WebhookUnresolvable) as caught:
        checker.vet("https://nowhere.invalid/hook?token=secret")
    assert caught.value.field == "webhook"
    assert "nowhere.invalid does not resolve" in caught.value.limit
    assert "Name or service not known" in caught.value.limit
    assert "secret" not in str(caught.value)  # the URL is shown without path or query
    assert resolver.asked == ["nowhere.invalid"]


def test_an_empty_answer_is_unresolvable() -> None:
    checker = WebhookPolicy((), lambda host, port: [])
    with pytest.raises(WebhookUnresolvable, match="no addresses"):
        checker.vet("http://hooks.example.com/")


def test_refusals_show_the_host_but_not_the_path_or_query() -> None:
    checker, _ = policy()
    with pytest.raises(WebhookRefused) as caught:
        checker.vet("http://internal.example.com:81/p/SECRET?token=TOKEN")
    message = str(caught.value)
    assert "internal.example.com resolves to 10.1.2.3" in message
    assert "http://internal.example.com:81" in message
    assert "SECRET" not in message and "TOKEN" not in message


def test_malformed_urls_are_still_refused_by_the_url_rule() -> None:
    checker, _ = policy()
    for url in ["ftp://hooks.example.com/", "http://user:pw@hooks.example.com/", "http://"]:
        with pytest.raises(InvalidJob, match="http\\(s\\) URL"):
            checker.vet(url)


@pytest.mark.parametrize(("host", "parsed"), [
    ("2130706433", "127.0.0.1"), ("0x7f.1", "127.0.0.1"), ("0177.0.0.1", "127.0.0.1"),
    ("10.1", "10.0.0.1"), ("10.1.0x100", "10.1.1.0"), ("1.2.3.4.", "1.2.3.4"),
    ("0x", "0.0.0.0"), ("Hooks.Example.COM.", "hooks.example.com"),
    ("b\u00fccher.example", "xn--bcher-kva.example"),
])
def test_hosts_are_read_the_way_resolvers_read_them(host: str, parsed: str) -> None:
    assert str(parse_host(host)) == parsed
