"""The host policy holds for the address FFmpeg actually connects to (issue 14): a name is resolved once
(through an injected resolver here, as an operator's own DNS would be), every address is checked, FFmpeg
is pointed at a checked address so a second resolution cannot rebind it, and HTTP redirects are
followed only to allowed hosts. Real loopback HTTP servers, real FFmpeg."""

from __future__ import annotations

import http.server
import socket
from pathlib import Path

import pytest

from streaming import HostNotAllowed, SourceUnreachable, open_source
from streaming.hosts import HostPolicy
from streaming.url_source import pinned
from tests.streaming.test_resolution_change import encode_segments

CLIP = encode_segments((((160, 120), 6),))


def fake_dns(table: dict[str, list[str]], calls: list[str] | None = None):
    """A resolver with getaddrinfo's signature answering from ``table`` (names this machine's DNS does not
    know, so FFmpeg could not have resolved them itself)."""

    def resolve(host, port, *args, **kw):
        if calls is not None:
            calls.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, 0)) for a in table[host]]

    return resolve


class Recorder(http.server.BaseHTTPRequestHandler):
    """Serves CLIP at /clip.ts, redirects /to/<target> with 302 to <target>; records each request."""

    seen: list[tuple[str, str | None]] = []

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        type(self).seen.append((self.path, self.headers.get("Host")))
        if self.path.startswith("/to/"):
            self.send_response(302)
            self.send_header("Location", self.path[len("/to/"):])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path != "/clip.ts":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "video/mp2t")
        self.send_header("Content-Length", str(len(CLIP)))
        self.end_headers()
        self.wfile.write(CLIP)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def recorder(local_http):
    handler = type("Rec", (Recorder,), {"seen": []})
    return local_http(handler), handler


def port_of(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


def frames_of(source) -> int:
    try:
        return sum(1 for _ in source)
    finally:
        source.close()


def test_a_name_resolving_to_a_denied_address_is_refused_before_anything_connects(recorder):
    base, handler = recorder
    policy = HostPolicy(deny=("127.0.0.0/8",))
    with pytest.raises(HostNotAllowed, match=r"host cams\.test \(127\.0\.0\.1\) is in a network .*--source-hosts"):
        open_source(f"http://cams.test:{port_of(base)}/clip.ts", host_policy=policy,
                    resolve=fake_dns({"cams.test": ["127.0.0.1"]}))
    # one bad address among good ones is enough to refuse
    with pytest.raises(HostNotAllowed, match="127.0.0.1"):
        HostPolicy(deny=("127.0.0.0/8",)).check("rtsp://cams.test/x", resolve=fake_dns({"cams.test": ["10.0.0.1", "127.0.0.1"]}))
    assert handler.seen == []


def test_ffmpeg_connects_to_the_checked_address_and_the_host_header_keeps_the_name(recorder):
    base, handler = recorder
    calls: list[str] = []
    url = f"http://cams.test:{port_of(base)}/clip.ts"  # not in this machine's DNS: only the pin can reach it
    source = open_source(url, host_policy=HostPolicy(), resolve=fake_dns({"cams.test": ["127.0.0.1"]}, calls),
                         live=False, reconnect=False)
    assert frames_of(source) == 6
    assert calls == ["cams.test"]  # resolved once, by the policy
    assert handler.seen == [("/clip.ts", f"cams.test:{port_of(base)}")]
    with pytest.raises(SourceUnreachable):  # the same URL without the policy: FFmpeg's own lookup fails
        open_source(url, open_timeout_s=5)


def test_a_redirect_to_a_denied_host_is_refused_naming_the_policy(recorder):
    base, handler = recorder
    with pytest.raises(HostNotAllowed) as info:
        open_source(f"{base}/to/http://169.254.169.254/latest/meta-data/", host_policy=HostPolicy())
    message = str(info.value)
    assert "redirected to http://169.254.169.254/latest/meta-data/" in message
    assert "169.254.0.0/16" in message and "--source-hosts" in message
    assert [p for p, _ in handler.seen] == ["/to/http://169.254.169.254/latest/meta-data/"] * 2  # FFmpeg, then the check


def test_a_redirect_outside_the_allow_list_is_refused_and_one_inside_is_followed(recorder):
    base, handler = recorder
    port = port_of(base)
    policy = HostPolicy(allow=("cams.test",))
    dns = fake_dns({"cams.test": ["127.0.0.1"], "evil.test": ["127.0.0.1"]})
    with pytest.raises(HostNotAllowed, match=r"redirected to http://evil\.test:\d+/clip\.ts: host evil\.test is not in "
                                             r"this server's allowed source hosts"):
        open_source(f"http://cams.test:{port}/to/http://evil.test:{port}/clip.ts", host_policy=policy, resolve=dns)
    source = open_source(f"http://cams.test:{port}/to//clip.ts", host_policy=policy, resolve=dns, live=False,
                         reconnect=False)  # a relative redirect to the same host
    assert frames_of(source) == 6
    assert handler.seen[-1] == ("/clip.ts", f"cams.test:{port}")


def test_a_redirect_to_another_scheme_is_refused(recorder):
    base, _ = recorder
    with pytest.raises(HostNotAllowed, match=r"redirected to file:///etc/passwd, which is not an http\(s\) URL"):
        open_source(f"{base}/to/file:///etc/passwd", host_policy=HostPolicy())


def test_a_redirect_loop_ends_with_a_clear_error(local_http):
    class Loop(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(302)
            self.send_header("Location", self.path + "x")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    base = local_http(Loop)
    with pytest.raises(SourceUnreachable, match="more than 5 redirects"):
        open_source(f"{base}/a", host_policy=HostPolicy())


def test_pinned_urls_per_scheme():
    import ipaddress

    from streaming.hosts import CheckedHost

    checked = CheckedHost("cam.test", (ipaddress.ip_address("10.0.0.5"), ipaddress.ip_address("10.0.0.6")))
    url, options = pinned("rtsp://admin:pw@cam.test:8554/live?x=1", "rtsp", checked)
    assert url == "rtsp://admin:pw@10.0.0.5:8554/live?x=1" and options == {}
    url, options = pinned("http://cam.test/a.m3u8", "http", checked)
    assert url == "http://10.0.0.5/a.m3u8" and options == {"max_redirects": "0", "headers": "Host: cam.test\r\n"}
    v6 = CheckedHost("cam.test", (ipaddress.ip_address("2001:db8::7"),))
    assert pinned("rtmp://cam.test:1935/app", "rtmp", v6)[0] == "rtmp://[2001:db8::7]:1935/app"
    url, options = pinned("https://cam.test/a.m3u8", "https", checked)
    assert url == "https://cam.test/a.m3u8"  # the name stays for the certificate and SNI ...
    assert options["max_redirects"] == "0"
    if Path("/etc/ssl/certs/ca-certificates.crt").exists():  # ... which is verified, so a rebound name fails
        assert options["tls_verify"] == "1" and Path(options["ca_file"]).is_file()


def test_an_rtsp_camera_named_by_a_private_dns_name_is_reached_on_the_checked_address(rtsp_server):
    """RTSP is pinned too: a name only the injected resolver knows reaches the real server (so FFmpeg never
    resolved it), and the same name resolving to a denied address is refused."""
    server = rtsp_server(width=160, height=120, fps=10)
    url = f"rtsp://cam.test:{server.port}{server.mount}"
    calls: list[str] = []
    with open_source(url, host_policy=HostPolicy(), resolve=fake_dns({"cam.test": ["127.0.0.1"]}, calls),
                     open_timeout_s=10, read_timeout_s=5) as source:
        frames = [f for _, f in zip(range(3), source)]
    assert [f.rgb.shape for f in frames] == [(120, 160, 3)] * 3 and calls == ["cam.test"]
    assert source.name == url  # messages and labels keep the name the user gave
    with pytest.raises(HostNotAllowed, match="127.0.0.1"):
        open_source(url, host_policy=HostPolicy(deny=("127.0.0.0/8",)), resolve=fake_dns({"cam.test": ["127.0.0.1"]}))
