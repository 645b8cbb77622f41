"""Which addresses WebRTC can use on this machine."""

from __future__ import annotations

import ipaddress

import ifaddr

__all__ = ["LoopbackUnavailable", "ice_addresses", "require_ice_address"]


class LoopbackUnavailable(RuntimeError):
    """The loopback server cannot work here (no usable network interface)."""


def ice_addresses() -> list[str]:
    """Addresses ICE can use: every interface address except loopback and link-local.

    libwebrtc (the SDK side) ignores loopback interfaces, and aioice (the
    server side) skips them too, so a machine whose only interface is ``lo``
    cannot complete a PeerConnection even with itself.
    """
    found: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            text = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            try:
                address = ipaddress.ip_address(text.split("%", 1)[0])
            except ValueError:
                continue
            if address.is_loopback or address.is_link_local or address.is_unspecified:
                continue
            found.append(str(address))
    return found


def require_ice_address() -> list[str]:
    """:func:`ice_addresses`, or a clear error when there is none.

    Raises:
        LoopbackUnavailable: when the machine has no non-loopback address.
    """
    addresses = ice_addresses()
    if not addresses:
        raise LoopbackUnavailable(
            "the loopback LiveKit server needs a non-loopback network interface (for example"
            " eth0 with an IPv4 address): libwebrtc ignores loopback interfaces, so a"
            " PeerConnection cannot connect on a machine (or network namespace) that has"
            " only 'lo'. Run with a network interface, e.g. without `--network none`."
        )
    return addresses
