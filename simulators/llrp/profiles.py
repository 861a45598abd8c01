"""What a simulated reader says it is, and the habits that come with that.

`impinj`: the Impinj Speedway R420 (r420.py, real bytes). `zebra`: a Zebra FX-series reader as
sllurp issue 115 shows one (GET_READER_CAPABILITIES of an FX reader, FW 1.6.5.160010):
GeneralDeviceCapabilities with DeviceManufacturerName 24831, ModelName 9500, 4 antennas, a UTC
clock, CanSetAntennaProperties false; its GET_READER_CONFIG carries custom parameters of
vendors 24831 and 161 (Motorola Solutions, whose reader line Zebra took over) and none of
Impinj's. Its RF mode table has none of Impinj's Autoset modes (ModeIdentifier 1000 and up,
an Impinj invention); the rest of its capabilities (power table, the plain RF modes 0-4) are
the R420's: no complete Zebra capture is at hand.

Habits modelled, each from a public report:
- Custom parameters of another vendor (Impinj's, as sllurp and EdgeX send them) in
  SET_READER_CONFIG or ADD_ROSPEC are answered with an LLRPStatus error, not ignored
  (sllurp issues 118/119, EdgeX device-rfid-llrp-go issue 278); custom messages such as
  IMPINJ_ENABLE_EXTENSIONS get ERROR_MESSAGE UnsupportedMessage (as the R420 profile does for
  messages it does not model).
- RO_ACCESS_REPORTs without any TagReportData arrive now and then while inventorying (sllurp
  issue 115).
- Timestamps: both report HasUTCClockCapability and UTC timestamps, so both profiles send
  UTC; nothing here invents an uptime clock the captures do not show.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from simulators.llrp import codec, r420

VENDOR_IMPINJ = 25882
VENDOR_MOTOROLA = 161
VENDOR_ZEBRA_FX = 24831  # what FX readers put in DeviceManufacturerName (sllurp issue 115)
IMPINJ_AUTOSET_MODES = 1000  # Impinj's Autoset RF modes are numbered from here

# GeneralDeviceCapabilities fixed fields: MaxNumberOfAntennaSupported, flags (bit 14: UTC
# clock), DeviceManufacturerName, ModelName, FirmwareVersionByteCount.
_GDC_FIXED = struct.Struct("!HHIIH")
_UTC_CLOCK = 1 << 14
# A custom parameter's TLV header (type 1023, reserved bits clear) and its vendor id.
_CUSTOM_HEADER = struct.Struct("!HHI")


@dataclass(frozen=True)
class Profile:
    name: str
    capabilities: bytes  # GET_READER_CAPABILITIES_RESPONSE payload
    reader_config: bytes  # GET_READER_CONFIG_RESPONSE payload
    # Vendors whose custom parameters the reader takes; None: it does not look (the R420
    # model as it always was).
    custom_vendors: frozenset[int] | None
    # While inventorying, an RO_ACCESS_REPORT with no tags this often (None: never).
    empty_report_interval_s: float | None


def general_device_capabilities(
    antennas: int, vendor: int, model: int, firmware: str, utc_clock: bool = True
) -> bytes:
    """A GeneralDeviceCapabilities TLV keeping the R420's sub-parameters (receive
    sensitivity table, GPIO capabilities, per-antenna air protocols)."""
    r420_gdc = codec.find_param(r420.CAPABILITIES_PAYLOAD, codec.P_GENERAL_DEVICE_CAPABILITIES)
    assert r420_gdc is not None
    r420_fw_len = _GDC_FIXED.unpack_from(r420_gdc.value, 0)[4]
    sub_params = r420_gdc.value[_GDC_FIXED.size + r420_fw_len :]
    fw = firmware.encode("ascii")
    flags = _UTC_CLOCK if utc_clock else 0
    fixed = _GDC_FIXED.pack(antennas, flags, vendor, model, len(fw))
    return codec.tlv(codec.P_GENERAL_DEVICE_CAPABILITIES, fixed + fw + sub_params)


def _with_general_device_capabilities(payload: bytes, gdc: bytes) -> bytes:
    return b"".join(
        gdc if p.type == codec.P_GENERAL_DEVICE_CAPABILITIES and not p.tv else p.raw
        for p in codec.iter_params(payload)
    )


def without_impinj_autoset_modes(payload: bytes) -> bytes:
    """Capabilities whose UHFC1G2RFModeTable keeps only the plain modes (ModeIdentifier < 1000)."""

    def autoset(param: codec.Param) -> bool:
        return param.type == codec.P_UHF_C1G2_RF_MODE_TABLE_ENTRY and (
            struct.unpack_from("!I", param.value, 0)[0] >= IMPINJ_AUTOSET_MODES
        )

    descend = {
        codec.P_REGULATORY_CAPABILITIES: 4,
        codec.P_UHF_BAND_CAPABILITIES: 0,
        codec.P_UHF_C1G2_RF_MODE_TABLE: 0,
    }
    return codec.filter_params(payload, autoset, descend)


def foreign_custom_vendor(body: bytes, allowed: frozenset[int]) -> int | None:
    """The vendor of the first custom parameter in `body` not of an `allowed` vendor, else None.

    Custom parameters sit deep inside an ADD_ROSPEC (ImpinjInventorySearchMode inside
    C1G2InventoryCommand, ImpinjTagReportContentSelector inside ROReportSpec), so this scans
    for their 8-byte header (type 1023, a length that fits, a vendor id) rather than modelling
    every parameter's fixed fields. A false match needs those 8 bytes by chance inside a field."""
    pos = body.find(b"\x03\xff")
    while pos >= 0 and pos + _CUSTOM_HEADER.size <= len(body):
        _type, length, vendor = _CUSTOM_HEADER.unpack_from(body, pos)
        if length >= 12 and pos + length <= len(body) and vendor not in allowed:
            return int(vendor)
        pos = body.find(b"\x03\xff", pos + 1)
    return None


IMPINJ = Profile(
    name="impinj",
    capabilities=r420.CAPABILITIES_PAYLOAD,
    reader_config=r420.READER_CONFIG_PAYLOAD,
    custom_vendors=None,
    empty_report_interval_s=None,
)

ZEBRA = Profile(
    name="zebra",
    capabilities=without_impinj_autoset_modes(
        _with_general_device_capabilities(
            r420.CAPABILITIES_PAYLOAD,
            general_device_capabilities(4, VENDOR_ZEBRA_FX, 9500, "1.6.5.160010"),
        )
    ),
    # The R420's config (antenna properties, keepalive, event spec) without Impinj's custom
    # parameters, of which it has none: the same bytes serve.
    reader_config=r420.READER_CONFIG_PAYLOAD,
    custom_vendors=frozenset({VENDOR_ZEBRA_FX, VENDOR_MOTOROLA}),
    empty_report_interval_s=2.0,
)

PROFILES = {p.name: p for p in (IMPINJ, ZEBRA)}
