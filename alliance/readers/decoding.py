"""Bytes to text: encodings (BOMs, declared, auto), and files that are not text exports refused by their bytes."""

from __future__ import annotations

import codecs
import re

from alliance.errors import ExportRejected

# Workbook kinds that are refused by name: macros are never run, binary and old workbooks cannot be checked.
REFUSED_SUFFIXES = {
    ".xlsm": "a macro-enabled workbook (.xlsm): macros are never run and such files are refused",
    ".xltm": "a macro-enabled template (.xltm): macros are never run and such files are refused",
    ".xlsb": "a binary workbook (.xlsb), which cannot be checked before reading",
    ".xls": "an old binary Excel workbook (.xls), which cannot be checked before reading",
}
EXPORT_AS = "export it as .xlsx (without macros) or CSV"
OLE2_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
# Leading bytes of files that are certainly not text exports.
BINARY_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"PK\x03\x04", "a ZIP archive (an XLSX workbook?)"),
    (b"PK\x05\x06", "an empty ZIP archive"),
    (OLE2_MAGIC, "an old binary Excel (.xls) or password-protected workbook"),
    (b"%PDF-", "a PDF document"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"\x7fELF", "an executable program"),
)
# A UTF-8 multi-byte sequence: its presence next to invalid bytes means the file mixes encodings.
UTF8_SEQUENCE = re.compile(
    rb"[\xc2-\xdf][\x80-\xbf]|\xe0[\xa0-\xbf][\x80-\xbf]|[\xe1-\xec\xee\xef][\x80-\xbf]{2}|\xed[\x80-\x9f][\x80-\xbf]"
    rb"|\xf0[\x90-\xbf][\x80-\xbf]{2}|[\xf1-\xf3][\x80-\xbf]{3}|\xf4[\x80-\x8f][\x80-\xbf]{2}"
)


def _line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def decode(data: bytes, declared: str, file_name: str) -> str:
    """Text of an export; BOMs win, then the declared encoding; 'auto' tries UTF-8 then cp1252, never lossy.

    'auto' falls back to cp1252 only when the whole file decodes as cp1252 and holds no UTF-8 sequence:
    a file mixing the two is refused rather than half of it turned into mojibake.
    """
    if data.startswith(codecs.BOM_UTF8):
        text = _strict(data[len(codecs.BOM_UTF8) :], "utf-8", file_name)
    elif data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        text = _strict(data, "utf-16", file_name)
    elif declared == "utf-16":
        raise ExportRejected(file_name, "declared UTF-16 but the file has no byte-order mark")
    elif declared == "cp1252":
        text = _strict(data, "cp1252", file_name)
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            if declared == "utf-8":
                raise ExportRejected(
                    file_name,
                    f"not valid UTF-8 at line {_line_of(data, exc.start)} (byte 0x{data[exc.start]:02X}); "
                    'set encoding = "cp1252" in the clinic\'s profile if the vendor writes Windows-1252',
                ) from None
            mixed = UTF8_SEQUENCE.search(data)
            if mixed is not None:
                raise ExportRejected(
                    file_name,
                    f"mixed encodings: UTF-8 text (line {_line_of(data, mixed.start())}) and a byte that is not "
                    f"UTF-8 (0x{data[exc.start]:02X} at line {_line_of(data, exc.start)}); re-export the file in "
                    'one encoding, or set encoding = "cp1252" in the clinic\'s profile if it is Windows-1252',
                ) from None
            try:
                text = data.decode("cp1252")
            except UnicodeDecodeError as exc2:
                raise ExportRejected(
                    file_name,
                    f"unknown encoding: not UTF-8 (line {_line_of(data, exc.start)}) and not cp1252 "
                    f"(byte 0x{data[exc2.start]:02X} at line {_line_of(data, exc2.start)})",
                ) from None
    nul = text.find("\x00")
    if nul >= 0:
        raise ExportRejected(
            file_name,
            f"contains NUL bytes (first at line {text.count(chr(10), 0, nul) + 1}): "
            "UTF-16 without a byte-order mark, or not a text file",
        )
    return text


def _strict(payload: bytes, encoding: str, file_name: str) -> str:
    try:
        return payload.decode(encoding)
    except UnicodeDecodeError as exc:
        # lines counted on the decoded prefix, so UTF-16 files are numbered right too
        line = payload[: exc.start].decode(encoding, errors="replace").count("\n") + 1
        raise ExportRejected(file_name, f"not valid {encoding} at line {line}") from None


def refuse_binary(data: bytes, export_format: str, file_name: str) -> None:
    """A text export that is really an image, an archive or a workbook is refused before decoding."""
    for magic, what in BINARY_SIGNATURES:
        if data.startswith(magic):
            raise ExportRejected(
                file_name,
                f"this is {what}, not a {export_format.upper()} text export; check the file and the "
                "clinic's export format",
            )
