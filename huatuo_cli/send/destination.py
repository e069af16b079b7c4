"""Where `huatuo send` delivers: a DIMSE peer (C-STORE) or a DICOMweb service (STOW-RS).

`--to` takes a name from the config file's `[pacs.NAME]` tables, an ad-hoc `AET@HOST:PORT`, or an
`http(s)://` URL (the DICOMweb base, the part before `/studies`). Every table is checked whole
(unknown keys are refused, so a typo never silently drops TLS), and every error names the file and
the table, never a patient.
"""

from __future__ import annotations

import hashlib
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the tomli backport (pyproject.toml: tomli>=2; python_version < '3.11')
    import tomli as tomllib

from huatuo_cli.bundles.locate import config_file
from huatuo_cli.errors import HuatuoError

#: our AE title when neither the config table nor --ae-title gives one
DEFAULT_AE_TITLE = "HUATUO"
DIMSE_KEYS = {"ae_title", "called_ae", "host", "port"}
WEB_KEYS = {"url"}
TLS_KEYS = {"tls", "ca_file", "cert_file", "key_file"}
COMMON_KEYS = {"retries", "timeout"}
_AD_HOC = re.compile(r"^(?P<aet>[^@]{1,16})@(?P<host>\[[0-9a-fA-F:.]+\]|[^:@\[\]]+):(?P<port>\d{1,5})$")


@dataclass(frozen=True)
class Tls:
    """TLS settings: a CA to trust (system CAs when None) and an optional client certificate."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None


@dataclass(frozen=True)
class Destination:
    """One PACS: DIMSE when `host` is set, DICOMweb when `url` is set."""

    name: str                       # the config name, or the address for an ad-hoc --to
    ae_title: str = DEFAULT_AE_TITLE
    called_ae: str = ""
    host: str = ""
    port: int = 0
    url: str = ""
    tls: Tls | None = None
    retries: int | None = None      # None: the command's default
    timeout: float | None = None

    @property
    def protocol(self) -> str:
        return "stow-rs" if self.url else "dimse"

    @property
    def address(self) -> str:
        """Where the files go, independent of what the destination is called: the ledger's key."""
        if self.url:
            return self.url.rstrip("/")
        return f"dimse://{self.called_ae}@{self.host.lower()}:{self.port}"

    @property
    def ledger_name(self) -> str:
        """A file name for this destination's ledger: readable slug plus a hash of the address."""
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", self.name)[:40].strip("._") or "pacs"
        return f"{slug}-{hashlib.sha256(self.address.encode()).hexdigest()[:12]}.jsonl"


def resolve(spec: str, *, ae_title: str | None = None, option: str = "--to") -> Destination:
    """The destination `--to SPEC` names: URL, AET@HOST:PORT, or a `[pacs.NAME]` table.

    `option`: the calling command's option that gave SPEC (`send --to`, `batch --send` / `--from`);
    the messages name that one only.
    """
    spec = spec.strip()
    if spec.lower().startswith(("http://", "https://")):
        return Destination(name=_url_name(spec), url=_check_url(spec, option),
                           tls=Tls() if spec.lower().startswith("https://") else None)
    match = _AD_HOC.match(spec)
    if match:
        return Destination(name=spec, ae_title=_check_aet(ae_title or DEFAULT_AE_TITLE, "--ae-title"),
                           called_ae=_check_aet(match["aet"], option), host=match["host"].strip("[]"),
                           port=_check_port(int(match["port"]), option))
    if "@" in spec or ":" in spec or "/" in spec:
        raise HuatuoError(f"{option} {spec!r} is neither AET@HOST:PORT, an http(s):// URL, nor a PACS name",
                          hint=f"e.g. {option} ORTHANC@pacs.example.org:104, {option} https://pacs/dicom-web, {option} main")
    return configured(spec, ae_title=ae_title, option=option)


def read_config(path: Path | None = None) -> dict[str, Any]:
    """The whole config file as a dict; {} when there is none."""
    path = path or config_file()
    if not path.is_file():
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise HuatuoError(f"config file {path} is not valid TOML: {exc}") from None


def configured(name: str, *, ae_title: str | None = None, path: Path | None = None, option: str = "--to") -> Destination:
    """The `[pacs.NAME]` table of the config file, checked (`option`: as for `resolve`)."""
    path = path or config_file()
    pacs = read_config(path).get("pacs", {})
    if not isinstance(pacs, dict) or not all(isinstance(v, dict) for v in pacs.values()):
        raise HuatuoError(f"{path}: `pacs` must hold tables like [pacs.main]")
    if name not in pacs:
        known = ", ".join(sorted(pacs)) or "none"
        raise HuatuoError(f"no PACS named {name!r} in {path} (configured: {known})",
                          hint=f"add a [pacs.{name}] table with called_ae, host and port (or url), "
                               f"or pass {option} AET@HOST:PORT")
    return _from_table(name, pacs[name], where=f"{path} [pacs.{name}]", ae_title=ae_title)


def _from_table(name: str, table: dict[str, Any], *, where: str, ae_title: str | None) -> Destination:
    unknown = set(table) - DIMSE_KEYS - WEB_KEYS - TLS_KEYS - COMMON_KEYS
    if unknown:
        raise HuatuoError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}",
                          hint="allowed: " + ", ".join(sorted(DIMSE_KEYS | WEB_KEYS | TLS_KEYS | COMMON_KEYS)))
    has_url, has_dimse = "url" in table, bool(set(table) & {"called_ae", "host", "port"})
    if has_url == has_dimse:
        raise HuatuoError(f"{where}: give either url (DICOMweb) or called_ae, host and port (DIMSE)")
    tls = _tls(table, where)
    retries = _opt_int(table, "retries", where, 0, 20)
    timeout = _opt_number(table, "timeout", where)
    if has_url:
        url = _check_url(_string(table, "url", where), where)
        if url.lower().startswith("https://") and tls is None:
            tls = Tls()
        if url.lower().startswith("http://") and tls is not None:
            raise HuatuoError(f"{where}: TLS settings with an http:// url; use https://")
        return Destination(name=name, url=url, tls=tls, retries=retries, timeout=timeout)
    missing = [k for k in ("called_ae", "host", "port") if k not in table]
    if missing:
        raise HuatuoError(f"{where}: missing {', '.join(missing)}")
    port = table["port"]
    if not isinstance(port, int) or isinstance(port, bool):
        raise HuatuoError(f"{where}: port must be a number, e.g. port = 104")
    ours = ae_title or (_string(table, "ae_title", where) if "ae_title" in table else DEFAULT_AE_TITLE)
    return Destination(name=name, ae_title=_check_aet(ours, where), called_ae=_check_aet(_string(table, "called_ae", where), where),
                       host=_string(table, "host", where), port=_check_port(port, where), tls=tls,
                       retries=retries, timeout=timeout)


def _tls(table: dict[str, Any], where: str) -> Tls | None:
    enabled = table.get("tls", False)
    if not isinstance(enabled, bool):
        raise HuatuoError(f"{where}: tls must be true or false")
    files = {k: table[k] for k in ("ca_file", "cert_file", "key_file") if k in table}
    if files and not enabled and "url" not in table:
        raise HuatuoError(f"{where}: ca_file/cert_file/key_file need tls = true")
    if not enabled and not (files and "url" in table):
        return None
    paths: dict[str, Path] = {}
    for key, value in files.items():
        if not isinstance(value, str) or not value:
            raise HuatuoError(f"{where}: {key} must be a path")
        path = Path(value).expanduser()
        if not path.is_file():
            raise HuatuoError(f"{where}: {key} {path} does not exist")
        paths[key] = path
    if ("key_file" in paths) and ("cert_file" not in paths):
        raise HuatuoError(f"{where}: key_file needs cert_file")
    return Tls(**paths)


def _string(table: dict[str, Any], key: str, where: str) -> str:
    value = table[key]
    if not isinstance(value, str) or not value.strip():
        raise HuatuoError(f"{where}: {key} must be a non-empty string")
    return value.strip()


def _opt_int(table: dict[str, Any], key: str, where: str, low: int, high: int) -> int | None:
    if key not in table:
        return None
    value = table[key]
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise HuatuoError(f"{where}: {key} must be a whole number from {low} to {high}")
    return value


def _opt_number(table: dict[str, Any], key: str, where: str) -> float | None:
    if key not in table:
        return None
    value = table[key]
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value <= 3600:
        raise HuatuoError(f"{where}: {key} must be seconds, more than 0 and at most 3600")
    return float(value)


def _check_aet(value: str, where: str) -> str:
    """AE titles: 1..16 characters of the default repertoire, no backslash, not only spaces."""
    aet = value.strip()
    if not aet or len(aet) > 16 or "\\" in aet or not all(32 <= ord(c) < 127 for c in aet):
        raise HuatuoError(f"{where}: AE title {value!r} is not valid (1 to 16 printable ASCII characters, no backslash)")
    return aet


def _check_port(port: int, where: str) -> int:
    if not 1 <= port <= 65535:
        raise HuatuoError(f"{where}: port {port} is out of range (1 to 65535)")
    return port


def _check_url(url: str, where: str) -> str:
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise HuatuoError(f"{where}: {url!r} is not an http(s):// URL")
    if parts.query or parts.fragment:
        raise HuatuoError(f"{where}: the DICOMweb URL must be the service base, without ?query or #fragment")
    return url.rstrip("/")


def _url_name(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}{parts.path}".rstrip("/")
