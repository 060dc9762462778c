"""The host policy of server-pulled URLs (issue 14, item 10): link-local and metadata addresses are
denied by default, an operator's allow list narrows what may be reached, and FFmpeg's protocols are
set per scheme."""

from __future__ import annotations

import socket

import pytest

from streaming.errors import SourceUnreachable
from streaming.hosts import HostNotAllowed, HostPolicy, parse_hosts
from streaming.url_source import default_options


def fake_dns(table):
    """A resolver answering from ``table`` (name -> addresses), shaped like socket.getaddrinfo."""
    def resolve(host, port, type=0):  # noqa: A002 - getaddrinfo's own name
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, type, 6, "", (a, 0)) for a in table[host]]
    return resolve


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data/", "rtsp://[fe80::1]/cam",
                                 "http://[::ffff:169.254.169.254]/", "http://[fd00:ec2::254]/"])
def test_link_local_and_metadata_addresses_are_denied_by_default(url):
    with pytest.raises(HostNotAllowed, match="link-local and cloud metadata"):
        HostPolicy().check(url)


def test_a_name_resolving_to_the_metadata_address_is_denied():
    dns = fake_dns({"evil.example": ["93.184.216.34", "169.254.169.254"]})
    with pytest.raises(HostNotAllowed, match="evil.example \\(169.254.169.254\\)"):
        HostPolicy().check("http://evil.example/x.mp4", resolve=dns)


def test_other_hosts_pass_by_default():
    HostPolicy().check("http://127.0.0.1:8080/cam.mjpg")
    HostPolicy().check("rtsp://cams.example/cam", resolve=fake_dns({"cams.example": ["10.1.2.3"]}))
    HostPolicy().check("/local/file.mp4")  # not a network URL


def test_an_allow_list_narrows_by_name_domain_and_network():
    policy = HostPolicy(allow=parse_hosts("cams.example.com, *.lab.example, 10.0.0.0/8"))
    dns = fake_dns({"cams.example.com": ["203.0.113.5"], "a.lab.example": ["203.0.113.6"],
                    "other.example": ["203.0.113.7"], "inside.example": ["10.2.3.4"]})
    for url in ("http://cams.example.com/x", "rtsp://a.lab.example/cam", "http://inside.example/",
                "http://10.9.9.9/x"):
        policy.check(url, resolve=dns)
    for url in ("http://other.example/x", "http://192.0.2.9/x"):
        with pytest.raises(HostNotAllowed, match="--source-hosts"):
            policy.check(url, resolve=dns)


def test_an_operator_may_allow_a_link_local_camera_by_its_address():
    HostPolicy(allow=("169.254.10.7",)).check("rtsp://169.254.10.7/cam")


def test_bad_entries_and_unresolvable_hosts_say_what_is_wrong():
    with pytest.raises(ValueError, match="'not a host!'"):
        parse_hosts("cams.example.com,not a host!")
    with pytest.raises(ValueError, match="deny entries"):
        HostPolicy(deny=("example.com",))
    with pytest.raises(SourceUnreachable, match="does not resolve"):
        HostPolicy().check("http://nowhere.invalid/x", resolve=fake_dns({}))


def test_ffmpeg_protocols_are_set_per_scheme():
    assert default_options("http")["protocol_whitelist"] == "http,tcp,crypto"
    assert "file" not in default_options("https")["protocol_whitelist"]
    assert default_options("rtsp")["protocol_whitelist"].startswith("rtsp,")
    assert default_options("rtsp")["rtsp_transport"] == "tcp"


def test_serve_flag_builds_the_policy_and_names_a_bad_entry():
    from app.cli.serve import source_host_policy
    from app.engine.config import ConfigError

    assert source_host_policy(None) == HostPolicy()
    assert source_host_policy("cams.example.com,10.0.0.0/8").allow == ("cams.example.com", "10.0.0.0/8")
    with pytest.raises(ConfigError, match="--source-hosts: .*'bad host'"):
        source_host_policy("bad host")
