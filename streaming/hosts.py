"""Which hosts a server-pulled URL may reach: an operator's allow list and a deny list of networks.

A server that opens URLs its clients name can be pointed at hosts only it can reach: the cloud
metadata service (169.254.169.254 on most clouds), link-local devices, the operator's own network.
:class:`HostPolicy` is checked before FFmpeg opens anything: the URL's host is resolved and every
address it resolves to must pass. The default denies link-local networks (169.254.0.0/16, fe80::/10,
which hold the metadata addresses) and the IPv6 metadata address, and allows the rest; an operator
narrows it with an allow list (``livesight serve --source-hosts cams.example.com,10.0.0.0/8``).

The policy holds for the address FFmpeg actually connects to: :class:`~streaming.url_source.URLSource`
resolves the name once (:meth:`HostPolicy.check` returns every address it checked, a
:class:`CheckedHost`) and, for ``http``, ``rtsp`` and ``rtmp``, hands FFmpeg the URL with the checked
address in place of the name (``Host:`` keeps the name for HTTP), so a second resolution cannot
rebind it. For TLS schemes (``https``, ``rtsps``, ``rtmps``) the name stays in the URL (the server's
certificate and SNI need it) and the certificate is verified against the system's CA bundle: a name
rebound to another host then fails the handshake, since that host has no certificate for it. HTTP
redirects are not followed by FFmpeg (``max_redirects=0``): the source reads the ``Location`` itself,
checks its host against this policy, and follows it (at most a few hops) or refuses it with
:class:`HostNotAllowed`.

Limits: an HLS playlist's segment URLs that name another host are fetched by FFmpeg without a check
(relative segment URLs stay on the checked address); RTSP servers' own redirects are followed by FFmpeg.
An allow list of addresses (not names) narrows both.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from streaming.errors import SourceError

__all__ = ["DEFAULT_DENY", "CheckedHost", "HostNotAllowed", "HostPolicy", "Resolver", "parse_hosts"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
#: A name resolver with :func:`socket.getaddrinfo`'s signature and result (``(family, type, proto,
#: canonname, sockaddr)`` tuples); tests and operators with their own DNS pass one in.
Resolver = Callable[..., list]

#: Networks no pulled URL may reach unless the operator allows them by name: link-local (the cloud
#: metadata services live there) and the IPv6 metadata address of AWS.
DEFAULT_DENY: tuple[str, ...] = ("169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128")


class HostNotAllowed(SourceError):
    """The URL's host (or an address it resolves to) is not allowed by the server's host policy."""

    code = "host_not_allowed"


def _network(text: str) -> Network | None:
    try:
        return ipaddress.ip_network(text.strip("[]"), strict=False)
    except ValueError:
        return None


def parse_hosts(text: str | Iterable[str] | None) -> tuple[str, ...]:
    """Entries of a comma-separated host list (host names, addresses, CIDR networks), normalised to
    lower case; None or empty gives ``()``.

    Raises:
        ValueError: an entry that is neither a network nor a plausible host name (naming it).
    """
    if text is None:
        return ()
    items = text.split(",") if isinstance(text, str) else list(text)
    out = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"a host entry must be a string; got {type(item).__name__}")
        entry = item.strip().lower()
        if not entry:
            continue
        if _network(entry) is None:
            name = entry[2:] if entry.startswith("*.") else entry
            if not name or any(not part or not all(c.isalnum() or c == "-" for c in part) for part in name.split(".")):
                raise ValueError(f"source host entry {item.strip()!r} is not a host name, an address or a network "
                                 "(e.g. cams.example.com, *.example.com, 10.0.0.5, 10.0.0.0/8)")
        out.append(entry)
    return tuple(out)


@dataclass(frozen=True)
class CheckedHost:
    """A URL's host as the policy checked it.

    Attributes:
        host: the host name (or address) the URL names, lower case.
        addresses: every address it resolved to, in the resolver's order, all allowed; connect to
            one of these (not to the name again) for the check to hold.
    """

    host: str
    addresses: tuple[Address, ...]


@dataclass(frozen=True)
class HostPolicy:
    """Hosts server-pulled URLs may reach.

    Attributes:
        allow: host names (``*.example.com`` for a domain and its subdomains), addresses and networks
            a URL may name; empty = any host not denied.
        deny: networks no URL may reach (checked on every resolved address; an entry of ``allow``
            that names the host itself overrides it: an operator who lists ``169.254.10.7`` means it).
    """

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = DEFAULT_DENY

    def __post_init__(self) -> None:
        object.__setattr__(self, "allow", parse_hosts(self.allow))
        deny = parse_hosts(self.deny)
        for entry in deny:
            if _network(entry) is None:
                raise ValueError(f"deny entries must be addresses or networks; got {entry!r}")
        object.__setattr__(self, "deny", deny)

    def _allowed_by_name(self, host: str) -> bool:
        for entry in self.allow:
            if entry.startswith("*.") and (host == entry[2:] or host.endswith(entry[1:])):
                return True
            if host == entry:
                return True
        return False

    def _in(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address, entries: tuple[str, ...]) -> bool:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        for entry in entries:
            net = _network(entry)
            if net is not None and net.version == address.version and address in net:
                return True
        return False

    def check(self, url: str, *, name: str | None = None, resolve: Resolver = socket.getaddrinfo
              ) -> CheckedHost | None:
        """Refuse ``url`` when its host is not allowed. Resolves the host name once (blocking: call it
        off an event loop) and checks every address it resolves to.

        Args:
            url: the URL.
            name: how messages name it (a redacted URL).
            resolve: the name resolver, :func:`socket.getaddrinfo` by default (``resolve(host, None,
                type=socket.SOCK_STREAM)``).

        Returns:
            the host and the addresses checked (connect to one of them), or None for a URL without a
            network host (a local file), which passes.

        Raises:
            HostNotAllowed: naming the host and why.
            SourceUnreachable: the host name does not resolve.
        """
        from streaming.errors import SourceUnreachable

        shown = name or url
        try:
            host = urlsplit(url).hostname
        except ValueError:
            raise HostNotAllowed(f"{shown}: the URL's host cannot be read", shown) from None
        if not host:
            return None
        host = host.lower().rstrip(".")
        named = self._allowed_by_name(host)
        literal = _network(host)
        if literal is not None and literal.num_addresses == 1:
            addresses = [literal.network_address]
        else:
            try:
                infos = resolve(host, None, type=socket.SOCK_STREAM)
            except (socket.gaierror, UnicodeError, OSError):
                raise SourceUnreachable(f"{shown}: the host name does not resolve", shown) from None
            try:
                found = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
            except (ValueError, TypeError, IndexError):
                raise SourceUnreachable(f"{shown}: the host name resolves to something that is not an address",
                                        shown) from None
            addresses = list(dict.fromkeys(found))
            if not addresses:
                raise SourceUnreachable(f"{shown}: the host name does not resolve", shown)
        if self.allow and not named and not all(self._in(a, self.allow) for a in addresses):
            raise HostNotAllowed(f"{shown}: host {host} is not in this server's allowed source hosts "
                                 "(livesight serve --source-hosts)", shown)
        if not named:
            for address in addresses:
                if self._in(address, self.deny):
                    raise HostNotAllowed(f"{shown}: host {host} ({address}) is in a network this server does not "
                                         f"pull from (denied: {', '.join(self.deny)}; by default the link-local and cloud "
                                         "metadata addresses; livesight serve --source-hosts)",
                                         shown)
        return CheckedHost(host, tuple(addresses))
