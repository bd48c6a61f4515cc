"""Indicator values: what each indicator type accepts, and its one canonical form.

Rules:
- ``canonical_value(value, itype)`` parses strictly and returns the canonical form, so that one
  observable written two ways (``EXAMPLE.com.`` and ``example.com``) is one indicator: the
  store dedups by ``(itype, value)`` and message ids are hashes of the payload, so every node
  must agree on the form. It is idempotent: a canonical value comes back unchanged, which is
  how values from peers are checked (``threatmesh.pubsub.indicators.validate_indicator``).
- Canonical forms follow the RFCs, not one library's formatting: IPv6 as RFC 5952 (compressed,
  lower case, IPv4-mapped addresses in dotted form, which Python < 3.13 does not do); CIDR as
  network address and prefix; names as lower-case A-labels (IDNA 2008, UTS 46 mapping) without
  the trailing dot; hashes lower-case hex; ASNs as ``AS`` + decimal number.
- Strict: IPv4 with leading zeros is refused (``010.1.1.1`` is 8.1.1.1 to some parsers and
  10.1.1.1 to others), so are zone indexes, bare host names, and anything with whitespace.
- Bounded: a value longer than ``MAX_VALUE_CHARS`` is refused before it is parsed, and values
  quoted in error messages are cut short.
- ``all_canonical(values, itype)`` asks canonical_value's question of a whole batch's values:
  the plain forms most values take are recognised by a pattern, the rest parsed. Same answer.
- Pure: no I/O, no DNS, no clock. Every failure is an ``IndicatorError`` naming the field.
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
import re
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType

import idna

from threatmesh.pubsub.proto import threatmesh_pb2 as pb

MAX_VALUE_CHARS = 2048
MAX_FQDN_CHARS = 253  # RFC 1035 2.3.4, without the trailing dot
MAX_LABEL_CHARS = 63
MAX_EMAIL_CHARS = 254  # RFC 5321 4.5.3.1.3 (path) less the angle brackets
MAX_EMAIL_LOCAL_CHARS = 64  # RFC 5321 4.5.3.1.1
MAX_SHOWN_CHARS = 80  # of a value quoted in an error message

ITYPE_BY_NAME: Mapping[str, int] = MappingProxyType(
    {
        "ipv4": pb.ITYPE_IPV4,
        "ipv6": pb.ITYPE_IPV6,
        "cidr": pb.ITYPE_CIDR,
        "fqdn": pb.ITYPE_FQDN,
        "url": pb.ITYPE_URL,
        "email": pb.ITYPE_EMAIL,
        "md5": pb.ITYPE_MD5,
        "sha1": pb.ITYPE_SHA1,
        "sha256": pb.ITYPE_SHA256,
        "sha512": pb.ITYPE_SHA512,
        "asn": pb.ITYPE_ASN,
    }
)
_NAME_BY_ITYPE = {itype: name for name, itype in ITYPE_BY_NAME.items()}

HASH_HEX_DIGITS: Mapping[int, int] = MappingProxyType(
    {pb.ITYPE_MD5: 32, pb.ITYPE_SHA1: 40, pb.ITYPE_SHA256: 64, pb.ITYPE_SHA512: 128}
)

# http, https and ftp are what feeds carry; ws and wss are there because malware uses WebSocket
# channels for command and control, and their URLs have the same shape (RFC 6455 3).
URL_SCHEMES = ("http", "https", "ftp", "ws", "wss")
_DEFAULT_PORTS = {"http": 80, "https": 443, "ftp": 21, "ws": 80, "wss": 443}


class IndicatorError(ValueError):
    """An indicator, or one field of it, is not valid.

    ``field`` names the field (as in a JSON record: ``value``, ``tlp``, ``first_seen``, ...),
    ``line`` the record's 1-based line in the input, or None when there is no input file
    (an indicator from a peer). ``problem`` is the message without line and field, and
    ``reason`` the message without the line.
    """

    def __init__(self, field: str, problem: str, *, line: int | None = None) -> None:
        self.field = field
        self.problem = problem
        self.line = line
        super().__init__(self.message)

    @property
    def reason(self) -> str:
        return f"field {shown(self.field)}: {self.problem}"

    @property
    def message(self) -> str:
        return self.reason if self.line is None else f"line {self.line}: {self.reason}"

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_error, (self.field, self.problem, self.line))

    def at_line(self, line: int | None) -> IndicatorError:
        """This error, for the record at ``line``."""
        return IndicatorError(self.field, self.problem, line=line)


def _rebuild_error(field: str, problem: str, line: int | None) -> IndicatorError:
    return IndicatorError(field, problem, line=line)


def shown(value: object) -> str:
    """``value`` quoted for an error message: repr (so control characters show), cut short."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > MAX_SHOWN_CHARS:
        text = text[: MAX_SHOWN_CHARS - 3] + "..."
    return repr(text)


def itype_name(itype: int) -> str:
    """The name of an indicator type (``"ipv4"``); IndicatorError (field "itype") if unknown."""
    try:
        return _NAME_BY_ITYPE[itype]
    except KeyError:
        raise IndicatorError("itype", f"unknown indicator type {itype}") from None


def parse_itype(name: object) -> int:
    """An indicator type from its name, case-insensitive; IndicatorError (field "itype")."""
    if not isinstance(name, str):
        raise IndicatorError("itype", f"expected a name like 'ipv4', got {type(name).__name__}")
    itype = ITYPE_BY_NAME.get(name.strip().lower())
    if itype is None:
        known = ", ".join(ITYPE_BY_NAME)
        raise IndicatorError("itype", f"{shown(name)} is not one of {known}")
    return itype


# Detection ----------------------------------------------------------------------------------
# detect_itype looks at the shape only; canonical_value then parses strictly, so "999.1.1.1"
# is detected as ipv4 and refused with "is not a valid ipv4 address" rather than "unknown".

_SCHEME_SHAPE = re.compile(r"[a-z][a-z0-9+.-]*://", re.ASCII | re.IGNORECASE)
_DOTTED_QUAD_SHAPE = re.compile(r"\d+(?:\.\d+){3}", re.ASCII)
_IPV6_SHAPE = re.compile(r"[0-9a-f]*:[0-9a-f:.]*:[0-9a-f:.]*(?:%\S*)?", re.ASCII | re.IGNORECASE)
_HEX_SHAPE = re.compile(r"[0-9a-f]+", re.ASCII | re.IGNORECASE)
_ASN_SHAPE = re.compile(r"as\d+(?:\.\d+)?", re.ASCII | re.IGNORECASE)
_HASH_ITYPE_BY_DIGITS = {digits: itype for itype, digits in HASH_HEX_DIGITS.items()}


def detect_itype(value: str) -> int:
    """The indicator type ``value`` looks like, for plain lists that do not say.

    Order matters: URL (has ``scheme://``), CIDR (address/prefix), IPv4, IPv6, hash (hex of
    32/40/64/128 digits), email (has ``@``), ASN (``AS`` + number), FQDN (has a dot). A bare
    number is not guessed (ASN? port?). IndicatorError (field "value") when nothing fits.
    """
    if not isinstance(value, str):
        raise IndicatorError("value", f"expected a string, got {type(value).__name__}")
    text = value.strip()
    if not text:
        raise IndicatorError("value", "is empty")
    if _SCHEME_SHAPE.match(text):
        return pb.ITYPE_URL
    address, slash, _ = text.partition("/")
    if slash and (_DOTTED_QUAD_SHAPE.fullmatch(address) or _IPV6_SHAPE.fullmatch(address)):
        return pb.ITYPE_CIDR
    if _DOTTED_QUAD_SHAPE.fullmatch(text):
        return pb.ITYPE_IPV4
    if _IPV6_SHAPE.fullmatch(text):
        return pb.ITYPE_IPV6
    if _HEX_SHAPE.fullmatch(text) and len(text) in _HASH_ITYPE_BY_DIGITS:
        return _HASH_ITYPE_BY_DIGITS[len(text)]
    if "@" in text:
        return pb.ITYPE_EMAIL
    if _ASN_SHAPE.fullmatch(text):
        return pb.ITYPE_ASN
    if "." in text:
        return pb.ITYPE_FQDN
    raise IndicatorError(
        "value", f"cannot tell what kind of indicator {shown(text)} is; give its itype"
    )


# Canonical forms ----------------------------------------------------------------------------

_SPACE_OR_CONTROL = re.compile(r"[\s\x00-\x1f\x7f-\x9f\ud800-\udfff]")  # and lone surrogates


def canonical_value(value: str, itype: int) -> str:
    """``value`` parsed as ``itype`` and returned in canonical form; IndicatorError if invalid.

    Surrounding whitespace is dropped; whitespace or control characters inside are refused.
    """
    if not isinstance(value, str):
        raise IndicatorError("value", f"expected a string, got {type(value).__name__}")
    if len(value) > MAX_VALUE_CHARS:
        raise IndicatorError(
            "value", f"is {len(value)} characters long; at most {MAX_VALUE_CHARS} are allowed"
        )
    canonicalise = _CANONICALISERS.get(itype)
    if canonicalise is None:
        raise IndicatorError("itype", f"unknown indicator type {itype}")
    text = value.strip()
    if not text:
        raise IndicatorError("value", "is empty")
    if _SPACE_OR_CONTROL.search(text):
        raise IndicatorError(
            "value", f"{shown(text)} contains whitespace or an unprintable character"
        )
    result = canonicalise(text)
    if len(result) > MAX_VALUE_CHARS:  # IDNA can make a name longer
        raise IndicatorError(
            "value",
            f"is {len(result)} characters long in canonical form; at most {MAX_VALUE_CHARS}",
        )
    return result


def _invalid(text: str, kind: str, why: str = "") -> IndicatorError:
    return IndicatorError(
        "value", f"{shown(text)} is not a valid {kind}" + (f": {why}" if why else "")
    )


_LEADING_ZERO = re.compile(r"(?:^|\.)0\d", re.ASCII)


def _ipv4(text: str) -> str:
    if _LEADING_ZERO.search(text):
        raise _invalid(text, "ipv4 address", "leading zeros are ambiguous (octal or decimal?)")
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise _invalid(text, "ipv4 address") from None


def _format_ipv6(address: ipaddress.IPv6Address) -> str:
    # RFC 5952 5: an IPv4-mapped address keeps its IPv4 part dotted. Python's own formatting
    # does so only from 3.13 on; writing it here keeps the form the same on every version.
    mapped = address.ipv4_mapped
    if mapped is not None:
        return f"::ffff:{mapped}"
    return address.compressed


def _ipv6(text: str) -> str:
    if "%" in text:
        raise _invalid(text, "ipv6 address", "a zone index (%...) means nothing off its host")
    if "." in text and _LEADING_ZERO.search(text.rpartition(":")[2]):
        raise _invalid(text, "ipv6 address", "leading zeros are ambiguous (octal or decimal?)")
    try:
        return _format_ipv6(ipaddress.IPv6Address(text))
    except ValueError:
        raise _invalid(text, "ipv6 address") from None


def _cidr(text: str) -> str:
    # Host bits set (10.1.2.3/8) are normalised to the network (10.0.0.0/8), not refused: the
    # prefix length alone says which block is meant, and feeds often write an interface
    # address with its prefix. What travels is always the network address (receivers refuse
    # any other form, see validate_indicator), so two spellings of one block stay one.
    address, slash, prefix = text.partition("/")
    if not slash:
        raise _invalid(text, "cidr", "a network needs a /prefix length")
    if not (prefix.isascii() and prefix.isdigit() and len(prefix) <= 3):
        raise _invalid(text, "cidr", "the prefix length must be a number of bits")
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    try:
        if ":" in address:
            _ipv6(address)
            network = ipaddress.IPv6Network(text, strict=False)
            return f"{_format_ipv6(network.network_address)}/{network.prefixlen}"
        _ipv4(address)
        network = ipaddress.IPv4Network(text, strict=False)
        return f"{network.network_address}/{network.prefixlen}"
    except IndicatorError as error:
        raise _invalid(text, "cidr", error.problem) from None
    except ValueError:
        raise _invalid(text, "cidr", "the prefix length is too long") from None


_LDH_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?", re.ASCII)


def _fqdn(text: str) -> str:
    name = text
    if not name.isascii():
        # IDNA 2008 with the UTS 46 mapping (what browsers and registries do): "Bücher.de"
        # becomes "xn--bcher-kva.de". IDNA 2003 (Python's "idna" codec) would map "faß.de" to
        # "fass.de", a different domain.
        try:
            name = idna.encode(name, uts46=True).decode("ascii")
        except idna.IDNAError as error:
            raise _invalid(text, "fqdn", f"not a valid internationalised name ({error})") from None
    name = name.lower().removesuffix(".")
    if len(name) > MAX_FQDN_CHARS:
        raise _invalid(text, "fqdn", f"longer than {MAX_FQDN_CHARS} characters")
    labels = name.split(".")
    if len(labels) < 2:
        raise _invalid(text, "fqdn", "needs at least two labels (a bare host name is not one)")
    for label in labels:
        if not label:
            raise _invalid(text, "fqdn", "has an empty label")
        if len(label) > MAX_LABEL_CHARS:
            raise _invalid(text, "fqdn", f"a label is longer than {MAX_LABEL_CHARS} characters")
        if not _LDH_LABEL.fullmatch(label):
            raise _invalid(
                text, "fqdn", f"label {shown(label)} may have only letters, digits, inner hyphens"
            )
        # Of an A-label, check only that it is punycode, not the IDNA 2008 rules: names
        # registered under IDNA 2003 (emoji domains) exist in DNS, and feeds must name them.
        if label.startswith("xn--") and not _is_punycode(label[4:]):
            raise _invalid(text, "fqdn", f"label {shown(label)} is not valid punycode")
    if labels[-1].isdigit():  # RFC 3696 2: a top-level domain is never all-numeric
        raise _invalid(text, "fqdn", "the last label is all digits (an IP address?)")
    return name


def _is_punycode(encoded: str) -> bool:
    """Whether ``encoded`` (an A-label less "xn--") is punycode (RFC 3492) of a Unicode label."""
    try:
        decoded = encoded.encode("ascii").decode("punycode")
    except UnicodeError:
        return False
    return (
        not decoded.isascii()
        and not _SPACE_OR_CONTROL.search(decoded)
        and decoded.encode("punycode") == encoded.encode("ascii")
    )


def _host(host: str) -> str:
    """The host part of a URL: [IPv6], dotted IPv4 or a name."""
    if host.startswith("[") and host.endswith("]"):
        return f"[{_ipv6(host[1:-1])}]"
    if _DOTTED_QUAD_SHAPE.fullmatch(host):
        return _ipv4(host)
    return _fqdn(host)


def _url(text: str) -> str:
    # Scheme and host are case-insensitive and get their canonical form; the default port is
    # dropped and an empty path becomes "/" (as WHATWG URL does). User info, path, query and
    # fragment are kept byte for byte: servers may treat them case-sensitively, and
    # re-encoding them could turn one URL into another.
    scheme, separator, rest = text.partition("://")
    if not separator:
        raise _invalid(text, "url", "it has no scheme:// part")
    scheme = scheme.lower()
    if scheme not in URL_SCHEMES:
        raise _invalid(text, "url", f"the scheme must be one of {', '.join(URL_SCHEMES)}")
    end = min((index for index in map(rest.find, "/?#") if index >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    user_info, at, host_port = authority.rpartition("@")
    if host_port.startswith("[") and "]" in host_port:
        host, _, after = host_port.partition("]")
        host += "]"
        if after and not after.startswith(":"):
            raise _invalid(text, "url", "unexpected text after the IPv6 address")
        port = after[1:]
        has_port = bool(after)
    else:
        host, colon, port = host_port.partition(":")
        has_port = bool(colon)
    if not host:
        raise _invalid(text, "url", "it has no host")
    try:
        host = _host(host)
    except IndicatorError as error:
        raise _invalid(text, "url", f"its host: {error.problem}") from None
    if has_port and port:
        if not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
            raise _invalid(text, "url", f"port {shown(port)} is not a number from 1 to 65535")
        port = str(int(port))
        if int(port) == _DEFAULT_PORTS[scheme]:
            port = ""
    if not tail.startswith("/"):
        tail = "/" + tail
    user_part = f"{user_info}@" if at else ""
    port_part = f":{port}" if port else ""
    return f"{scheme}://{user_part}{host}{port_part}{tail}"


# RFC 5322 3.2.3 dot-atom; quoted local parts and non-ASCII (RFC 6531) ones are not accepted.
_EMAIL_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")


def _email(text: str) -> str:
    # The domain is a name (lower case, IDNA); the local part keeps its case (RFC 5321 2.4).
    local, at, domain = text.rpartition("@")
    if not at or not local or not domain:
        raise _invalid(text, "email address", "expected local-part@domain")
    if len(local) > MAX_EMAIL_LOCAL_CHARS:
        raise _invalid(
            text, "email address", f"the local part is over {MAX_EMAIL_LOCAL_CHARS} characters"
        )
    if not _EMAIL_LOCAL.fullmatch(local):
        raise _invalid(text, "email address", "the local part has characters not allowed")
    try:
        domain = _fqdn(domain)
    except IndicatorError as error:
        raise _invalid(text, "email address", f"its domain: {error.problem}") from None
    address = f"{local}@{domain}"
    if len(address) > MAX_EMAIL_CHARS:
        raise _invalid(text, "email address", f"longer than {MAX_EMAIL_CHARS} characters")
    return address


_HEX = re.compile(r"[0-9a-f]+", re.ASCII)


def _hash(itype: int) -> Callable[[str], str]:
    digits = HASH_HEX_DIGITS[itype]
    kind = f"{_NAME_BY_ITYPE[itype]} hash"

    def canonical_hash(text: str) -> str:
        lowered = text.lower()
        if not _HEX.fullmatch(lowered):
            raise _invalid(text, kind, "not hexadecimal")
        if len(lowered) != digits:
            raise _invalid(text, kind, f"has {len(lowered)} hex digits, not {digits}")
        return lowered

    return canonical_hash


_ASN = re.compile(r"(?:as)?(\d{1,10})(?:\.(\d{1,5}))?", re.ASCII | re.IGNORECASE)


def _asn(text: str) -> str:
    # "AS13335", "as13335" and "13335" are one ASN; so is asdot "AS1.10" = 65546 (RFC 5396).
    match = _ASN.fullmatch(text)
    if match is None:
        raise _invalid(text, "asn", "expected AS followed by a number")
    high, low = match.groups()
    if low is None:
        number = int(high)
    else:
        if int(high) > 0xFFFF or int(low) > 0xFFFF:
            raise _invalid(text, "asn", "each half of an asdot number is at most 65535")
        number = int(high) * 0x10000 + int(low)
    if not 0 < number < 2**32:
        raise _invalid(text, "asn", "the number must be from 1 to 4294967295")
    return f"AS{number}"


_CANONICALISERS: Mapping[int, Callable[[str], str]] = MappingProxyType(
    {
        pb.ITYPE_IPV4: _ipv4,
        pb.ITYPE_IPV6: _ipv6,
        pb.ITYPE_CIDR: _cidr,
        pb.ITYPE_FQDN: _fqdn,
        pb.ITYPE_URL: _url,
        pb.ITYPE_EMAIL: _email,
        pb.ITYPE_MD5: _hash(pb.ITYPE_MD5),
        pb.ITYPE_SHA1: _hash(pb.ITYPE_SHA1),
        pb.ITYPE_SHA256: _hash(pb.ITYPE_SHA256),
        pb.ITYPE_SHA512: _hash(pb.ITYPE_SHA512),
        pb.ITYPE_ASN: _asn,
    }
)


# Many values at once ------------------------------------------------------------------------
# A node checks every value of every batch it receives (``validate_batch``), and
# ``canonical_value`` parses each one: 1-3 us for a hash, a name or a URL. Most values are in
# the plain forms below, canonical by construction, which a pattern recognises in a fraction of
# that. A plain form is only ever a value that ``canonical_value`` returns unchanged
# (tests/test_indicators_bulk.py checks each against it); anything else (IPv6, CIDR, IDNA
# names, URLs with a port or user, ...) is parsed as before. So the answer is exactly
# canonical_value's, only sooner.
#
# A batch's values of one type are matched as one column, each value followed by a line break,
# by one call of the pattern (``_PLAIN_COLUMNS``): each call has a fixed cost, about that of
# matching a short value, which a column pays once. Only a column with some value not in plain
# form is gone through value by value. Hashes need no pattern: one pass over the values joined
# (``_all_lower_hex``).

_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"  # no leading zero
_PLAIN_IPV4 = rf"{_OCTET}(?:\.{_OCTET}){{3}}"
# _LDH_LABEL of at most 63 characters: 1 to 63 of [a-z0-9-], the first and last not "-". The
# run is possessive (taken whole, never given back): a label ends at a "." or the name's end,
# so giving back could not help a match, and trying would cost time on every label.
_LABEL = r"(?!-)[a-z0-9-]{1,63}+(?<!-)"
_END = r"(?:\n|\Z)"  # where a value ends: at the end of the text, or of its line in a column
# Two or more labels, lower case, no trailing dot, the last not all digits (the end of a name
# is the end of the value, or the "/" after a URL's host). Labels starting "xn--" are checked
# to be punycode, so values with "xn--" are left to canonical_value.
_PLAIN_NAME = rf"(?:{_LABEL}\.)++(?![0-9]+(?:/|{_END})){_LABEL}"
# Explicit classes, no \d or \w: without re.ASCII those match non-ASCII digits and letters.
_PLAIN_IPV4_VALUE = re.compile(_PLAIN_IPV4)
_PLAIN_NAME_VALUE = re.compile(_PLAIN_NAME)
# scheme://host/path: a lower-case scheme, a host that is a plain IPv4 address or a plain name
# of at most MAX_FQDN_CHARS, no user, no port, then "/" and anything but what canonical_value
# refuses (_SPACE_OR_CONTROL; \s here is Unicode whitespace, as there).
_PLAIN_URL_VALUE = re.compile(
    rf"(?:{'|'.join(URL_SCHEMES)})://"
    rf"(?:{_PLAIN_IPV4}|(?=[a-z0-9.-]{{1,{MAX_FQDN_CHARS}}}/){_PLAIN_NAME})"
    r"/[^\s\x00-\x1f\x7f-\x9f\ud800-\udfff]*+"
)
# A dot-atom local part (_EMAIL_LOCAL) of at most MAX_EMAIL_LOCAL_CHARS, "@", a plain name.
_PLAIN_EMAIL_VALUE = re.compile(
    rf"(?=[^@\n]{{1,{MAX_EMAIL_LOCAL_CHARS}}}@){_EMAIL_LOCAL.pattern}@{_PLAIN_NAME}"
)
_PLAIN_ASN_VALUE = re.compile(r"AS[1-9][0-9]{0,9}")

# The longest value in plain form, by type; a longer one is left to canonical_value.
_MAX_PLAIN_CHARS: Mapping[int, int] = MappingProxyType(
    {
        pb.ITYPE_IPV4: len("255.255.255.255"),
        pb.ITYPE_FQDN: MAX_FQDN_CHARS,
        pb.ITYPE_URL: MAX_VALUE_CHARS,
        pb.ITYPE_EMAIL: MAX_EMAIL_CHARS,
    }
)
_PLAIN_VALUES: Mapping[int, re.Pattern[str]] = MappingProxyType(
    {
        pb.ITYPE_IPV4: _PLAIN_IPV4_VALUE,
        pb.ITYPE_FQDN: _PLAIN_NAME_VALUE,
        pb.ITYPE_URL: _PLAIN_URL_VALUE,
        pb.ITYPE_EMAIL: _PLAIN_EMAIL_VALUE,
    }
)
# The same patterns, for a column: every value followed by "\n".
_PLAIN_COLUMNS: Mapping[int, re.Pattern[str]] = MappingProxyType(
    {itype: re.compile(rf"(?:{pattern.pattern}\n)*") for itype, pattern in _PLAIN_VALUES.items()}
)


def _plain(value: str, itype: int) -> bool:
    """Whether ``value`` is in the plain form of ``itype`` (ipv4, fqdn, url or email)."""
    return (
        len(value) <= _MAX_PLAIN_CHARS[itype]
        and "xn--" not in value
        and _PLAIN_VALUES[itype].fullmatch(value) is not None
    )


def _all_plain(values: Sequence[str], itype: int) -> bool:
    """Whether every one of ``values`` is in the plain form of ``itype``, in one match."""
    column = "\n".join(values) + "\n"
    return (
        column.count("\n") == len(values)  # no value holds a line break of its own
        and max(map(len, values)) <= _MAX_PLAIN_CHARS[itype]
        and "xn--" not in column  # a line break cannot be part of "xn--": in some value
        and _PLAIN_COLUMNS[itype].fullmatch(column) is not None
    )


def _plain_asn(value: str) -> bool:
    return _PLAIN_ASN_VALUE.fullmatch(value) is not None and int(value[2:]) < 2**32


_PLAIN_FORMS: Mapping[int, Callable[[str], bool]] = MappingProxyType(
    {
        **{itype: functools.partial(_plain, itype=itype) for itype in _PLAIN_VALUES},
        pb.ITYPE_ASN: _plain_asn,
    }
)
_LOWER_HEX = re.compile(r"[0-9a-f]*")  # explicit class: no re.IGNORECASE, no Unicode digits
_LOWER_HEX_ASCII = b"0123456789abcdef"


def _all_lower_hex(values: Sequence[str], digits: int) -> bool:
    """Whether every one of ``values`` is ``digits`` lower-case hex digits (one pass over all)."""
    if set(map(len, values)) != {digits}:
        return False
    joined = "".join(values)
    # What is left after deleting every lower-case hex digit is something else.
    return joined.isascii() and not joined.encode("ascii").translate(None, _LOWER_HEX_ASCII)


def _parses_unchanged(value: str, itype: int) -> bool:
    try:
        return canonical_value(value, itype) == value
    except IndicatorError:
        return False


def is_canonical(value: str, itype: int) -> bool:
    """Whether ``canonical_value(value, itype) == value``, without error: what
    ``validate_indicator`` asks of a peer's value."""
    plain = _PLAIN_FORMS.get(itype)
    if plain is not None and plain(value):
        return True
    digits = HASH_HEX_DIGITS.get(itype)
    if digits is not None:
        return len(value) == digits and _LOWER_HEX.fullmatch(value) is not None
    return _parses_unchanged(value, itype)


def all_canonical(values: Sequence[str], itype: int) -> bool:
    """``is_canonical`` of every one of ``values``, for a batch at once."""
    if not values:
        return True
    digits = HASH_HEX_DIGITS.get(itype)
    if digits is not None:  # a hash is canonical exactly when it is lower-case hex
        return _all_lower_hex(values, digits)
    if itype in _PLAIN_COLUMNS and _all_plain(values, itype):
        return True
    plain = _PLAIN_FORMS.get(itype)
    doubtful = values if plain is None else list(itertools.filterfalse(plain, values))
    return all(_parses_unchanged(value, itype) for value in doubtful)
